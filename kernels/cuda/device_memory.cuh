// RAII for the CUDA memory the executor holds (device memory, pinned host memory; events are transport's
// DeviceEvent), and one way to turn a CUDA status into ferry::Error. Every release makes the memory's own
// device current first (and puts the thread's context back after): releases run on whatever thread drops the
// last reference, often a user's thread that has never touched this GPU.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <mutex>
#include <new>
#include <string>

#include "ferry/core/error.hpp"
#include "ferry/transport/cuda_check.hpp"

namespace ferry::kernels::cuda {

using transport::detail::DeviceEvent;
using transport::detail::DeviceScope;
using transport::detail::forget_last_error;

// Clears the thread's last error before it throws (cuda_check.hpp says why).
inline void check(cudaError_t status, const char* what) {
  if (status == cudaSuccess) return;
  forget_last_error();
  fail(status == cudaErrorMemoryAllocation ? Errc::system : Errc::internal,
       std::string("cuda: ") + what + ": " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) +
           ")");
}

// The calling thread's current device (where the next allocation lands).
inline int current_device() {
  int device = 0;
  check(cudaGetDevice(&device), "cudaGetDevice");
  return device;
}

// The executor's own stream-ordered memory pool on `device`, made at first use and kept for the process: it
// keeps what is freed for the next operation (release threshold: never). The device's default pool is left
// as it is: its settings are every cudaMallocAsync user's in the process (a framework's allocator, say), and
// a pool that never gives memory back would starve them and other processes on the GPU.
inline cudaMemPool_t executor_pool(int device) {
  static std::mutex mutex;
  static std::map<int, cudaMemPool_t> pools;  // never destroyed: arrays may be freed until the process ends
  std::lock_guard lock(mutex);
  auto found = pools.find(device);
  if (found != pools.end()) return found->second;
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.handleTypes = cudaMemHandleTypeNone;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = device;
  cudaMemPool_t pool = nullptr;
  check(cudaMemPoolCreate(&pool, &props), "cudaMemPoolCreate");
  std::uint64_t keep = ~std::uint64_t{0};
  check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute");
  pools.emplace(device, pool);
  return pool;
}

// `count` elements of T in device memory of the current device (uninitialised unless zeroed). With a
// stream, allocated and freed in stream order from the executor's pool (executor_pool: no device-wide
// synchronisation, memory reused at once: per-operation arrays come from there); without, plain cudaMalloc.
// A stream-ordered free needs its stream: `stream_owner` (when the stream is not the legacy default stream,
// which is never destroyed) keeps it alive until the array is gone, which may be long after the Buffer that
// made the stream (a Handle holds a dispatch's records). Without an owner (a stream the engine's caller
// passed and never registered with keep_stream_alive) the stream is held raw: the caller must keep it alive.
template <class T>
class DeviceArray {
 public:
  DeviceArray() = default;
  explicit DeviceArray(std::size_t count, cudaStream_t stream = nullptr, bool ordered = false,
                       std::shared_ptr<void> stream_owner = {})
      : count_(count) {
    if (count == 0) return;
    void* memory = nullptr;
    if (ordered) {
      check(cudaMallocFromPoolAsync(&memory, count * sizeof(T), executor_pool(current_device()), stream),
            "cudaMallocFromPoolAsync");
    } else {
      check(cudaMalloc(&memory, count * sizeof(T)), "cudaMalloc");
    }
    data_ = std::shared_ptr<T>(static_cast<T*>(memory),
                               Free{stream, ordered, current_device(), std::move(stream_owner)});
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
    int device;
    std::shared_ptr<void> stream_owner;  // released after the free is enqueued
    void operator()(T* memory) const {
      DeviceScope scope(device, std::nothrow);
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
    host_ = std::unique_ptr<T, Free>(static_cast<T*>(memory), Free{current_device()});
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
    int device = 0;
    void operator()(T* memory) const {
      DeviceScope scope(device, std::nothrow);
      cudaFreeHost(memory);
    }
  };
  std::unique_ptr<T, Free> host_;
  T* device_ = nullptr;
  std::size_t count_ = 0;
};

}  // namespace ferry::kernels::cuda
