#include "cuda_support.hpp"

#include <unistd.h>

#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <new>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/kernels/cuda/device_engine.hpp"
#include "ferry/transport/cuda_check.hpp"
#include "ferry/transport/fabric.hpp"

namespace ferry::detail {

void cuda_check(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) transport::detail::check_cuda(status, "cuda: " + what);
}

std::shared_ptr<CUstream_st> make_buffer_stream(int gpu) {
  cudaStream_t stream = nullptr;
  cuda_check(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  return std::shared_ptr<CUstream_st>(stream, [gpu](cudaStream_t done) {
    transport::detail::DeviceScope scope(gpu, std::nothrow);
    cudaStreamDestroy(done);
  });
}

GpuSharing gpu_sharing(Group& group, int gpu, const std::string& key) {
  namespace kc = kernels::cuda;
  // Compared by the GPU's UUID, which every process sees the same whatever its CUDA_VISIBLE_DEVICES; the
  // UUID and the process id together name one CUDA context.
  cudaDeviceProp properties{};
  cuda_check(cudaGetDeviceProperties(&properties, gpu), "cudaGetDeviceProperties");
  const auto* uuid = reinterpret_cast<const std::uint8_t*>(&properties.uuid);
  constexpr std::size_t kUuid = sizeof(properties.uuid);
  std::vector<std::uint8_t> mine(uuid, uuid + kUuid);
  const std::int32_t pid = static_cast<std::int32_t>(::getpid());
  const std::int32_t connections = kc::device_connections(std::getenv("CUDA_DEVICE_MAX_CONNECTIONS"));
  for (std::int32_t word : {pid, connections}) {
    const auto* bytes = reinterpret_cast<const std::uint8_t*>(&word);
    mine.insert(mine.end(), bytes, bytes + sizeof(word));
  }
  const std::vector<std::vector<std::uint8_t>> all = group.all_gather(key, mine);
  GpuSharing sharing;
  auto same_gpu = [&](const std::vector<std::uint8_t>& a, const std::vector<std::uint8_t>& b) {
    return std::equal(a.begin(), a.begin() + kUuid, b.begin());
  };
  auto same_context = [&](const std::vector<std::uint8_t>& a, const std::vector<std::uint8_t>& b) {
    return std::equal(a.begin(), a.begin() + kUuid + sizeof(std::int32_t), b.begin());
  };
  for (const std::vector<std::uint8_t>& other : all) {
    sharing.ranks += same_gpu(other, mine) ? 1 : 0;
    sharing.threads += same_context(other, mine) ? 1 : 0;
  }
  for (std::size_t r = 0; r < all.size() && sharing.problem.empty(); ++r) {
    int threads = 0;
    for (const std::vector<std::uint8_t>& other : all) threads += same_context(other, all[r]) ? 1 : 0;
    std::int32_t theirs = 0;
    std::memcpy(&theirs, all[r].data() + kUuid + sizeof(std::int32_t), sizeof(theirs));
    const std::string problem = kc::connections_problem(threads, theirs);
    if (!problem.empty()) sharing.problem = "rank " + std::to_string(r) + "'s process: " + problem;
  }
  return sharing;
}

std::unique_ptr<transport::Proxy> make_device_proxy(const transport::Peers& peers, void* region,
                                                    std::size_t bytes, int rings, int gpu, Duration timeout) {
  transport::FabricOptions fabric_options;
  fabric_options.kind = transport::fabric_kind_from_env();
  std::unique_ptr<transport::Fabric> fabric = transport::make_fabric(peers, fabric_options);
  if (fabric->register_region(region, bytes, transport::MemoryKind::cuda) != 0)
    fail(Errc::internal, "the buffer's fabric region is not region 0");
  fabric->connect();
  transport::ProxyOptions proxy_options;
  proxy_options.rings = rings;
  proxy_options.memory = transport::RingMemory::cuda_mapped;
  proxy_options.timeout = timeout;
  proxy_options.device = gpu;  // the fabric moves this GPU's memory from the proxy threads
  return std::make_unique<transport::Proxy>(std::move(fabric), proxy_options);
}

}  // namespace ferry::detail
