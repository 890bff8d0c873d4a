// Device memory for ferry's tensors (the CUDA executor's outputs): plain blocks for Tensor(...,
// Device::cuda), and the CUDA calls behind a Buffer's block cache (device_block_cache.hpp). Built in every
// configuration: without CUDA it says so.
#include <string>

#include "device_block_cache.hpp"
#include "ferry/core/error.hpp"
#include "host_block_cache.hpp"

#if defined(FERRY_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include <new>

#include "ferry/transport/cuda_check.hpp"
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

namespace {

using transport::detail::DeviceScope;

// Every call on the cache's device, whichever thread makes it (a tensor's last reference may go anywhere).
class CudaMemoryApi final : public DeviceMemoryApi {
 public:
  explicit CudaMemoryApi(int device) : device_(device) {}

  void* allocate(std::size_t bytes) override {
    DeviceScope scope(device_);
    void* memory = nullptr;
    const cudaError_t status = cudaMalloc(&memory, bytes);
    if (status == cudaErrorMemoryAllocation) {
      // Handled (the cache empties itself and tries again): clear it, or the caller's next
      // cudaGetLastError would report it as its own.
      cudaGetLastError();
      return nullptr;
    }
    transport::detail::check_cuda(status,
                                  "cudaMalloc(" + std::to_string(bytes) + " bytes) for a device tensor");
    return memory;
  }
  void release(void* block) noexcept override {
    DeviceScope scope(device_, std::nothrow);
    cudaFree(block);  // synchronises the device: what used the block has finished
  }
  Marker mark(Stream stream) noexcept override {
    DeviceScope scope(device_, std::nothrow);
    cudaEvent_t event = nullptr;
    if (cudaEventCreateWithFlags(&event, cudaEventDisableTiming) != cudaSuccess) return nullptr;
    if (cudaEventRecord(event, static_cast<cudaStream_t>(stream)) != cudaSuccess) {
      cudaEventDestroy(event);
      return nullptr;  // the block is then reused on its own stream only
    }
    return event;
  }
  bool passed(Marker marker) noexcept override {
    DeviceScope scope(device_, std::nothrow);
    return cudaEventQuery(static_cast<cudaEvent_t>(marker)) == cudaSuccess;
  }
  void forget(Marker marker) noexcept override {
    DeviceScope scope(device_, std::nothrow);
    cudaEventDestroy(static_cast<cudaEvent_t>(marker));
  }

 private:
  int device_;
};

}  // namespace

std::shared_ptr<DeviceBlockCache> make_device_block_cache(int device, std::size_t limit) {
  return DeviceBlockCache::create(std::make_unique<CudaMemoryApi>(device), limit);
}
#else
std::byte* allocate_device_bytes(std::size_t, bool) {
  fail(Errc::unsupported, "a device tensor in a build of ferry without CUDA");
}
void free_device_bytes(std::byte*) {}
std::shared_ptr<DeviceBlockCache> make_device_block_cache(int, std::size_t) {
  fail(Errc::unsupported, "device memory in a build of ferry without CUDA");
}
#endif

}  // namespace ferry::detail
