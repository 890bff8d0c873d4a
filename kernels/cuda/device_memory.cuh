// RAII for the CUDA memory the executor allocates, and one way to turn a CUDA status into ferry::Error.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstring>
#include <memory>
#include <string>

#include "ferry/core/error.hpp"

namespace ferry::kernels::cuda {

inline void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  fail(status == cudaErrorMemoryAllocation ? Errc::system : Errc::internal,
       std::string("cuda: ") + what + ": " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) +
           ")");
}

// `count` elements of T in device memory (uninitialised unless zeroed). With a stream, allocated and freed in
// stream order from the device's memory pool (no device-wide synchronisation, memory reused at once:
// per-operation arrays come from there); without, plain cudaMalloc.
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(std::size_t count, cudaStream_t stream = nullptr, bool ordered = false)
      : count_(count) {
    if (count == 0) return;
    void* memory = nullptr;
    if (ordered) {
      check(cudaMallocAsync(&memory, count * sizeof(T), stream), "cudaMallocAsync");
    } else {
      check(cudaMalloc(&memory, count * sizeof(T)), "cudaMalloc");
    }
    data_ = std::shared_ptr<T>(static_cast<T*>(memory), Free{stream, ordered});
  }
  T* data() const { return data_.get(); }
  std::size_t size() const { return count_; }
  void zero(cudaStream_t stream) const {
    if (count_ > 0) check(cudaMemsetAsync(data_.get(), 0, count_ * sizeof(T), stream), "cudaMemsetAsync");
  }

 private:
  struct Free {
    cudaStream_t stream;
    bool ordered;
    void operator()(T* memory) const {
      if (ordered) {
        cudaFreeAsync(memory, stream);
      } else {
        cudaFree(memory);
      }
    }
  };
  std::shared_ptr<T> data_;
  std::size_t count_ = 0;
};

// `count` zeroed elements of T in pinned host memory that the GPU addresses too (mapped).
template <class T>
class MappedArray {
 public:
  MappedArray() = default;
  explicit MappedArray(std::size_t count) : count_(count) {
    void* memory = nullptr;
    check(cudaHostAlloc(&memory, count * sizeof(T), cudaHostAllocMapped | cudaHostAllocPortable),
          "cudaHostAlloc");
    host_.reset(static_cast<T*>(memory));
    std::memset(memory, 0, count * sizeof(T));
    void* device = nullptr;
    check(cudaHostGetDevicePointer(&device, memory, 0), "cudaHostGetDevicePointer");
    device_ = static_cast<T*>(device);
  }
  T* host() const { return host_.get(); }
  T* device() const { return device_; }
  std::size_t size() const { return count_; }

 private:
  struct Free {
    void operator()(T* memory) const { cudaFreeHost(memory); }
  };
  std::unique_ptr<T, Free> host_;
  T* device_ = nullptr;
  std::size_t count_ = 0;
};

}  // namespace ferry::kernels::cuda
