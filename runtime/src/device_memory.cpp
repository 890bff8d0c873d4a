// Device memory for ferry's tensors: blocks for Tensor(..., Device::cuda), and the CUDA calls behind a
// Buffer's block cache (device_block_cache.hpp). Both are stream-ordered (cudaMallocAsync, cudaFreeAsync):
// cudaFree synchronises the whole device, and with ranks of one process sharing a GPU a rank's thread would
// wait in it for another rank's kernel, which waits for this rank. Built in every configuration: without
// CUDA it says so.
#include <memory>
#include <string>

#include "device_block_cache.hpp"
#include "ferry/core/error.hpp"
#include "host_block_cache.hpp"

#if defined(FERRY_HAVE_CUDA)
#include <cuda_runtime_api.h>

#include <map>
#include <mutex>
#include <new>

#include "ferry/transport/cuda_check.hpp"
#endif

namespace ferry::detail {

#if defined(FERRY_HAVE_CUDA)
namespace {

using transport::detail::check_cuda;
using transport::detail::DeviceScope;
using transport::detail::forget_last_error;

// The stream ferry's own device tensors are allocated and freed in, one per device: non-blocking, and only
// ever given allocations, zeroing and frees, so neither waits behind anyone's kernels. Created on first use
// and never destroyed (a tensor may be dropped at any moment until the process ends).
cudaStream_t tensor_stream(int device) {
  static std::mutex mutex;
  static auto* streams = new std::map<int, cudaStream_t>();  // never destroyed, as the streams
  std::lock_guard lock(mutex);
  if (auto it = streams->find(device); it != streams->end()) return it->second;
  cudaStream_t stream = nullptr;
  check_cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking),
             "cudaStreamCreateWithFlags for device tensors on device " + std::to_string(device));
  streams->emplace(device, stream);
  return stream;
}

}  // namespace

std::shared_ptr<std::byte> allocate_device_block(std::size_t bytes, bool zero) {
  int device = 0;
  check_cuda(cudaGetDevice(&device), "cudaGetDevice");
  const cudaStream_t stream = tensor_stream(device);
  void* memory = nullptr;
  if (cudaError_t status = cudaMallocAsync(&memory, bytes, stream); status != cudaSuccess) {
    if (status == cudaErrorMemoryAllocation)
      cudaGetLastError();  // reported here, not by the caller's next call
    fail(Errc::system, "cudaMallocAsync(" + std::to_string(bytes) +
                           " bytes) for a device tensor: " + cudaGetErrorName(status));
  }
  // Freed in the tensor stream's order: the pool may hand the memory out again at once, so work that reads a
  // tensor on another stream must be finished before its last copy is dropped (as with a framework's
  // caching allocator).
  std::shared_ptr<std::byte> block(static_cast<std::byte*>(memory), [device, stream](std::byte* done) {
    DeviceScope scope(device, std::nothrow);
    cudaFreeAsync(done, stream);
  });
  if (zero) check_cuda(cudaMemsetAsync(memory, 0, bytes, stream), "cudaMemsetAsync for a device tensor");
  // Usable on any stream once the host has seen the allocation (and the zeros) done: only this stream waits.
  check_cuda(cudaStreamSynchronize(stream), "a device tensor's allocation");
  return block;
}

namespace {

// Every call on the cache's device, whichever thread makes it (a tensor's last reference may go anywhere).
class CudaMemoryApi final : public DeviceMemoryApi {
 public:
  CudaMemoryApi(int device, std::shared_ptr<void> streams_owner)
      : device_(device), streams_owner_(std::move(streams_owner)) {}

  void* allocate(std::size_t bytes, Stream stream) override {
    DeviceScope scope(device_);
    void* memory = nullptr;
    const cudaError_t status = cudaMallocAsync(&memory, bytes, static_cast<cudaStream_t>(stream));
    if (status == cudaErrorMemoryAllocation) {
      // Handled (the cache empties itself and tries again): clear it, or the caller's next
      // cudaGetLastError would report it as its own.
      cudaGetLastError();
      return nullptr;
    }
    check_cuda(status, "cudaMallocAsync(" + std::to_string(bytes) + " bytes) for a device tensor");
    return memory;
  }
  void release(void* block, Stream stream) noexcept override {
    DeviceScope scope(device_, std::nothrow);
    // On a stream in a CUDA graph capture (a low-latency buffer's stream joins its caller's) the free would
    // be captured, of memory the graph does not own, which invalidates the capture: the block is left
    // allocated instead (a rare eviction while a capture is open).
    if (capturing(stream)) return;
    cudaFreeAsync(block, static_cast<cudaStream_t>(stream));  // after what the stream still does with it
  }
  Marker mark(Stream stream) noexcept override {
    DeviceScope scope(device_, std::nothrow);
    if (capturing(stream)) return nullptr;  // an event recorded in a capture can never be queried
    cudaEvent_t event = nullptr;
    if (cudaEventCreateWithFlags(&event, cudaEventDisableTiming) != cudaSuccess) {
      forget_last_error();
      return nullptr;
    }
    if (cudaEventRecord(event, static_cast<cudaStream_t>(stream)) != cudaSuccess) {
      forget_last_error();
      cudaEventDestroy(event);
      return nullptr;  // the block is then reused on its own stream only
    }
    return event;
  }
  bool passed(Marker marker) noexcept override {
    DeviceScope scope(device_, std::nothrow);
    const transport::detail::RelaxedCaptureMode relaxed;  // never a captured event (mark() records none)
    const cudaError_t status = cudaEventQuery(static_cast<cudaEvent_t>(marker));
    if (status != cudaSuccess && status != cudaErrorNotReady) forget_last_error();
    return status == cudaSuccess;
  }
  void forget(Marker marker) noexcept override {
    DeviceScope scope(device_, std::nothrow);
    cudaEventDestroy(static_cast<cudaEvent_t>(marker));
  }

 private:
  static bool capturing(Stream stream) noexcept {
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    if (cudaStreamIsCapturing(static_cast<cudaStream_t>(stream), &status) != cudaSuccess) {
      forget_last_error();
      return true;  // the legacy stream while another stream captures: as good as capturing
    }
    return status != cudaStreamCaptureStatusNone;
  }

  int device_;
  std::shared_ptr<void> streams_owner_;  // the streams blocks are released on outlive every block
};

}  // namespace

std::shared_ptr<DeviceBlockCache> make_device_block_cache(int device, std::size_t limit,
                                                          std::shared_ptr<void> streams_owner) {
  return DeviceBlockCache::create(std::make_unique<CudaMemoryApi>(device, std::move(streams_owner)), limit);
}
#else
std::shared_ptr<std::byte> allocate_device_block(std::size_t, bool) {
  fail(Errc::unsupported, "a device tensor in a build of ferry without CUDA");
}
std::shared_ptr<DeviceBlockCache> make_device_block_cache(int, std::size_t, std::shared_ptr<void>) {
  fail(Errc::unsupported, "device memory in a build of ferry without CUDA");
}
#endif

}  // namespace ferry::detail
