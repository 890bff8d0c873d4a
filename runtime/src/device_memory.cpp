// Device memory for ferry's tensors (the CUDA executor's outputs). Built in every configuration: without CUDA
// it says so.
#include <string>

#include "ferry/core/error.hpp"
#include "host_block_cache.hpp"

#if defined(FERRY_HAVE_CUDA)
#include <cuda_runtime_api.h>
#endif

namespace ferry::detail {

#if defined(FERRY_HAVE_CUDA)
std::byte* allocate_device_bytes(std::size_t bytes, bool zero) {
  void* memory = nullptr;
  if (cudaError_t status = cudaMalloc(&memory, bytes); status != cudaSuccess) {
    fail(Errc::system,
         "cudaMalloc(" + std::to_string(bytes) + " bytes) for a device tensor: " + cudaGetErrorName(status));
  }
  if (zero) {
    if (cudaError_t status = cudaMemset(memory, 0, bytes); status != cudaSuccess) {
      cudaFree(memory);
      fail(Errc::system, std::string("cudaMemset for a device tensor: ") + cudaGetErrorName(status));
    }
  }
  return static_cast<std::byte*>(memory);
}

void free_device_bytes(std::byte* block) {
  cudaFree(block);
}
#else
std::byte* allocate_device_bytes(std::size_t, bool) {
  fail(Errc::unsupported, "a device tensor in a build of ferry without CUDA");
}
void free_device_bytes(std::byte*) {}
#endif

}  // namespace ferry::detail
