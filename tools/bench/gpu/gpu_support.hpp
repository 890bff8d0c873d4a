// CUDA plumbing shared by the GPU benchmarks: owned device memory, events and streams, bounded waits,
// medians.
#pragma once

#include <cuda_runtime_api.h>

#include <chrono>
#include <cstddef>
#include <string>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/transport/cuda_check.hpp"

namespace ferry::gpu_bench::detail {

using transport::detail::check_cuda;

// Makes `device` current (DeviceScope) after checking it exists; Errc::unsupported names why no GPU is
// usable.
class UseDevice {
 public:
  explicit UseDevice(int device);

 private:
  transport::detail::DeviceScope scope_;
};

class DeviceMemory {
 public:
  DeviceMemory(std::size_t bytes, const std::string& what);
  ~DeviceMemory();
  DeviceMemory(const DeviceMemory&) = delete;
  DeviceMemory& operator=(const DeviceMemory&) = delete;
  void* get() const { return pointer_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* pointer_ = nullptr;
  std::size_t bytes_ = 0;
};

class Event {
 public:
  Event();
  ~Event();
  Event(const Event&) = delete;
  Event& operator=(const Event&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

class Stream {
 public:
  Stream();
  ~Stream();
  Stream(const Stream&) = delete;
  Stream& operator=(const Stream&) = delete;
  cudaStream_t get() const { return stream_; }

 private:
  cudaStream_t stream_ = nullptr;
};

inline constexpr std::chrono::seconds kWaitLimit{120};

// Polls until `event` has completed (never blocks in CUDA); Errc::timeout naming `what` after `limit`.
void wait_event(cudaEvent_t event, const std::string& what, Duration limit = kWaitLimit);
// Records an event on `stream` and waits for it (wait_event).
void wait_stream(cudaStream_t stream, const std::string& what, Duration limit = kWaitLimit);
// Milliseconds between two completed events.
double elapsed_ms(cudaEvent_t start, cudaEvent_t stop);
double median(std::vector<double> values);

}  // namespace ferry::gpu_bench::detail
