#include "bench/gpu/gpu_support.hpp"

#include <algorithm>

#include "ferry/core/error.hpp"

namespace ferry::gpu_bench::detail {

namespace {

int checked_device(int device) {
  std::string reason;
  const int count = transport::detail::visible_gpus(reason);
  if (count == 0) fail(Errc::unsupported, reason);
  if (device < 0 || device >= count) {
    fail(Errc::invalid_argument,
         "device " + std::to_string(device) + " is outside the " + std::to_string(count) + " visible GPUs");
  }
  return device;
}

}  // namespace

UseDevice::UseDevice(int device) : scope_(checked_device(device)) {}

DeviceMemory::DeviceMemory(std::size_t bytes, const std::string& what) : bytes_(bytes) {
  check_cuda(cudaMalloc(&pointer_, bytes), "cudaMalloc(" + std::to_string(bytes) + " bytes) for " + what);
}

DeviceMemory::~DeviceMemory() {
  cudaFree(pointer_);
}

Event::Event() {
  check_cuda(cudaEventCreate(&event_), "cudaEventCreate");
}

Event::~Event() {
  cudaEventDestroy(event_);
}

Stream::Stream() {
  check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
}

Stream::~Stream() {
  cudaStreamDestroy(stream_);
}

void wait_event(cudaEvent_t event, const std::string& what, Duration limit) {
  Deadline deadline(limit);
  Backoff backoff;
  for (;;) {
    cudaError_t status = cudaEventQuery(event);
    if (status == cudaSuccess) return;
    if (status != cudaErrorNotReady) check_cuda(status, "cudaEventQuery while waiting for " + what);
    if (deadline.expired()) {
      fail(Errc::timeout,
           "waiting for " + what + " timed out after " +
               std::to_string(std::chrono::duration_cast<std::chrono::seconds>(limit).count()) + " s");
    }
    backoff.pause();
  }
}

void wait_stream(cudaStream_t stream, const std::string& what, Duration limit) {
  Event done;
  check_cuda(cudaEventRecord(done.get(), stream), "cudaEventRecord");
  wait_event(done.get(), what, limit);
}

double elapsed_ms(cudaEvent_t start, cudaEvent_t stop) {
  float ms = 0;
  check_cuda(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
  return ms;
}

double median(std::vector<double> values) {
  if (values.empty()) fail(Errc::internal, "median of no values");
  std::sort(values.begin(), values.end());
  const std::size_t middle = values.size() / 2;
  return values.size() % 2 == 1 ? values[middle] : (values[middle - 1] + values[middle]) / 2;
}

}  // namespace ferry::gpu_bench::detail
