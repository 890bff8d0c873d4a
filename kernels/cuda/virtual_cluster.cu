#include "ferry/kernels/cuda/virtual_cluster.hpp"

#include <vector>

#include "device_memory.cuh"
#include "ferry/transport/device_copy.hpp"
#include "ferry/transport/proxy.hpp"

namespace ferry::kernels::cuda {

namespace p = protocol;

struct VirtualCluster::Impl {
  p::BufferLayout layout;
  std::vector<DeviceArray<std::byte>> buffers;  // per rank
  std::unique_ptr<transport::Proxy> proxy;      // owns the fabrics; stopped before the buffers go
  std::unique_ptr<DeviceEngine> engine;         // stopped first

  ~Impl() {
    engine.reset();
    if (proxy) proxy->stop();
    proxy.reset();
  }
};

VirtualCluster::VirtualCluster(const p::LayoutParams& params, const DeviceOptions& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& impl = *impl_;
  const std::string unavailable = gpu_unavailable_reason();
  if (!unavailable.empty()) fail(Errc::unsupported, "a virtual cluster needs a GPU: " + unavailable);
  DeviceScope scope(options.device);
  impl.layout = p::make_buffer_layout(params);
  const p::Topology& topo = params.topo;
  const int R = topo.num_ranks();
  // Zeroed on a stream of its own, synchronised before anything else touches the counters and rings: a plain
  // cudaMemset goes on the legacy stream and may still be queued when it returns, and nothing after this
  // waits for that stream (the engine's and device_copy's streams are non-blocking, as may be the caller's).
  // Not the legacy stream, nor the device: they would wait for other work (another engine's spinning
  // kernels).
  cudaStream_t zeroing = nullptr;
  check(cudaStreamCreateWithFlags(&zeroing, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  const std::unique_ptr<CUstream_st, cudaError_t (*)(cudaStream_t)> zeroing_owner(zeroing, cudaStreamDestroy);
  for (int r = 0; r < R; ++r) {
    impl.buffers.emplace_back(impl.layout.total_bytes);
    check(cudaMemsetAsync(impl.buffers.back().data(), 0, impl.layout.total_bytes, zeroing),
          "cudaMemsetAsync(buffer)");
  }
  check(cudaStreamSynchronize(zeroing), "zero the buffers");

  std::vector<DeviceRank> ranks(R);
  for (int r = 0; r < R; ++r) {
    ranks[r].rank = r;
    ranks[r].buffer = impl.buffers[r].data();
    for (int l = 0; l < topo.local_size; ++l) {
      ranks[r].node_peers.push_back(impl.buffers[topo.rank_of(topo.node_of(r), l)].data());
    }
  }
  if (topo.num_nodes > 1) {
    // One fabric per rank, each driven by its own proxy thread; ring k of rank r is the proxy's ring k * R +
    // r, which thread (k * R + r) % R = r drains with rank r's fabric.
    transport::DeviceCopyWorld world(R, options.device, options.timeout);
    std::vector<std::unique_ptr<transport::Fabric>> fabrics;
    for (int r = 0; r < R; ++r) {
      fabrics.push_back(world.make_fabric(r));
      fabrics.back()->register_region(impl.buffers[r].data(), impl.layout.total_bytes,
                                      transport::MemoryKind::cuda);
    }
    for (auto& fabric : fabrics) fabric->connect();
    const int rings = device_rings_per_rank(topo, options);
    transport::ProxyOptions proxy_options;
    proxy_options.rings = rings * R;
    proxy_options.memory = transport::RingMemory::cuda_mapped;
    proxy_options.timeout = options.timeout;
    proxy_options.device = options.device;  // as a Buffer's: the fabric moves this GPU's memory
    impl.proxy = std::make_unique<transport::Proxy>(std::move(fabrics), proxy_options);
    for (int r = 0; r < R; ++r) {
      for (int k = 0; k < rings; ++k) ranks[r].rings.push_back(impl.proxy->ring(k * R + r).device_view());
    }
  }
  impl.engine = std::make_unique<DeviceEngine>(impl.layout, std::move(ranks), options);
}

VirtualCluster::~VirtualCluster() = default;

int VirtualCluster::num_ranks() const {
  return impl_->layout.params.topo.num_ranks();
}
const p::BufferLayout& VirtualCluster::layout() const {
  return impl_->layout;
}
DeviceEngine& VirtualCluster::engine() {
  return *impl_->engine;
}

std::uint64_t VirtualCluster::proxy_commands() const {
  if (!impl_->proxy) return 0;
  std::uint64_t total = 0;
  for (int t = 0; t < impl_->proxy->num_threads(); ++t) total += impl_->proxy->commands_executed(t);
  return total;
}

}  // namespace ferry::kernels::cuda
