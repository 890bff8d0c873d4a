// What the runtime's CUDA files share (device_backend.cpp, low_latency_device.cpp): CUDA errors as ferry
// errors, and a buffer's own stream.
#pragma once

#include <cuda_runtime_api.h>

#include <memory>
#include <string>

#include "ferry/core/deadline.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/peers.hpp"
#include "ferry/transport/proxy.hpp"

namespace ferry::detail {

// transport::detail::check_cuda with the runtime's "cuda: " before `what`: Errc::system naming the call and
// the CUDA error, the thread's last error cleared.
void cuda_check(cudaError_t status, const std::string& what);

// A non-blocking stream of GPU `gpu`, shared: arrays freed in its order (a dispatch's records, which a handle
// may keep after the buffer is gone) hold it, so it is destroyed after the last of them.
std::shared_ptr<CUstream_st> make_buffer_stream(int gpu);

// Who shares GPU `gpu` with this rank.
struct GpuSharing {
  // Ranks of the job on this GPU itself: threads of this process, other processes (MPS), other emulated
  // nodes of this machine. Their blocks run beside ours and must all fit at once.
  int ranks = 0;
  // Ranks of this process on this GPU (this one included): they share one CUDA context, and its legacy
  // default stream.
  int threads = 0;
  // Why some process of the job runs more ranks as threads on one GPU than its hardware queues allow
  // (kernels::cuda::connections_problem), the same text on every rank, so that all refuse together; "" when
  // none does.
  std::string problem;
};

// Collective over the group (an all_gather under `key`).
GpuSharing gpu_sharing(Group& group, int gpu, const std::string& key);

// The proxy of a buffer in device memory of GPU `gpu` (`bytes` at `region`, its fabric region 0) reaching
// other nodes: the fabric FERRY_FABRIC names, connected to every peer, and `rings` command rings in memory
// mapped for the GPU, whose kernels post to them. Device memory across nodes needs a fabric that can
// register it (verbs with dma-buf or nvidia-peermem, or a UCX built with CUDA); the fabric says which is
// missing. Collective.
std::unique_ptr<transport::Proxy> make_device_proxy(const transport::Peers& peers, void* region,
                                                    std::size_t bytes, int rings, int gpu, Duration timeout);

}  // namespace ferry::detail
