#include "ferry/transport/cuda_check.hpp"

#include "ferry/core/error.hpp"

namespace ferry::transport::detail {

std::string describe_cuda(cudaError_t status) {
  return std::string(cudaGetErrorName(status)) + " (" + cudaGetErrorString(status) + ")";
}

void check_cuda(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) fail(Errc::system, what + ": " + describe_cuda(status));
}

int visible_gpus(std::string& reason) {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    reason = "no usable GPU (cudaGetDeviceCount: " + describe_cuda(status) + ")";
    return 0;
  }
  if (count == 0) reason = "no usable GPU (cudaGetDeviceCount: 0 devices)";
  return count;
}

DeviceScope::DeviceScope(int device) {
  int current = -1;
  check_cuda(cudaGetDevice(&current), "cudaGetDevice");
  if (current == device) return;
  check_cuda(cudaSetDevice(device), "cudaSetDevice(" + std::to_string(device) + ")");
  previous_ = current;
}

DeviceScope::~DeviceScope() {
  if (previous_ >= 0) cudaSetDevice(previous_);
}

}  // namespace ferry::transport::detail
