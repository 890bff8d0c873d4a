// Small pieces that CUDA-using code shares (transport, tools, tests; not installed): turning a CUDA status
// into ferry::Error, and making a device current for a scope without disturbing the caller's choice. Exists
// only in builds with CUDA (the functions live in libferry).
#pragma once

#include <cuda_runtime_api.h>

#include <string>

namespace ferry::transport::detail {

// Throws Errc::system "<what>: <error name> (<error text>)" unless status is cudaSuccess. `what` names the
// call and its subject ("cudaMalloc(4096 bytes) on device 0").
void check_cuda(cudaError_t status, const std::string& what);

// "<error name> (<error text>)" of a status, for messages that carry more than one.
std::string describe_cuda(cudaError_t status);

// The number of GPUs this process sees; 0 with `reason` saying why ("no usable GPU (cudaGetDeviceCount:
// ...)") when it sees none. cudaGetDeviceCount leaves its argument untouched on failure
// (cudaErrorInsufficientDriver without a GPU), so the status is checked first.
int visible_gpus(std::string& reason);

// Makes `device` current for the calling thread while it lives and restores the previous device after. Skips
// the switch (and the restore) when `device` is already current.
class DeviceScope {
 public:
  explicit DeviceScope(int device);
  ~DeviceScope();
  DeviceScope(const DeviceScope&) = delete;
  DeviceScope& operator=(const DeviceScope&) = delete;

 private:
  int previous_ = -1;
};

}  // namespace ferry::transport::detail
