#include "proxy/ring_memory.hpp"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <string>

#include "ferry/core/error.hpp"

#if defined(FERRY_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include "ferry/transport/cuda_check.hpp"
#endif

namespace ferry::transport::detail {
namespace {

constexpr std::size_t kPage = 4096;

}  // namespace

RingAllocation::RingAllocation(std::size_t bytes, RingMemory mode) : bytes_(bytes) {
  if (bytes == 0) fail(Errc::invalid_argument, "ring allocation of 0 bytes");
  if (mode != RingMemory::host) {
#if defined(FERRY_HAVE_CUDA)
    std::string reason;
    if (visible_gpus(reason) > 0) {
      cudaError_t status = cudaHostAlloc(&host_, bytes, cudaHostAllocMapped | cudaHostAllocPortable);
      if (status == cudaSuccess) {
        status = cudaHostGetDevicePointer(&device_, host_, 0);
        if (status == cudaSuccess) {
          cuda_ = true;
          std::memset(host_, 0, bytes);
          return;
        }
        cudaFreeHost(host_);
        host_ = nullptr;
        device_ = nullptr;
        reason = std::string("cudaHostGetDevicePointer: ") + cudaGetErrorName(status);
      } else {
        host_ = nullptr;
        reason =
            std::string("cudaHostAlloc(") + std::to_string(bytes) + " bytes): " + cudaGetErrorName(status);
      }
    }
    if (mode == RingMemory::cuda_mapped) {
      fail(Errc::unsupported, "command ring: cannot allocate cuda-mapped host memory: " + reason);
    }
#else
    if (mode == RingMemory::cuda_mapped) {
      fail(Errc::unsupported, "command ring: cuda-mapped memory requested but this build has no CUDA");
    }
#endif
  }
  std::size_t rounded = (bytes + kPage - 1) / kPage * kPage;
  host_ = std::aligned_alloc(kPage, rounded);
  if (host_ == nullptr)
    fail_errno("command ring: aligned_alloc of " + std::to_string(rounded) + " bytes", errno);
  std::memset(host_, 0, rounded);
}

RingAllocation::~RingAllocation() {
#if defined(FERRY_HAVE_CUDA)
  if (cuda_) {
    cudaFreeHost(host_);
    return;
  }
#endif
  std::free(host_);
}

}  // namespace ferry::transport::detail
