#include <cuda_runtime.h>

#include <string>
#include <vector>

#include "ferry/kernels/cuda_selftest.hpp"

namespace ferry::kernels {
namespace {

__global__ void write_pattern(unsigned* out, unsigned salt) {
  unsigned index = blockIdx.x * blockDim.x + threadIdx.x;
  out[index] = index * 2654435761u ^ salt;
}

std::string describe(const char* what, cudaError_t status) {
  return std::string(what) + ": " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")";
}

}  // namespace

std::string cuda_selftest(int device, int blocks) {
  constexpr int kThreads = 128;
  constexpr unsigned kSalt = 0x5eed1234u;
  if (auto status = cudaSetDevice(device); status != cudaSuccess) return describe("cudaSetDevice", status);
  const std::size_t count = static_cast<std::size_t>(blocks) * kThreads;
  unsigned* out = nullptr;
  if (auto status = cudaMalloc(&out, count * sizeof(unsigned)); status != cudaSuccess) {
    return describe("cudaMalloc", status);
  }
  std::string error;
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(kThreads);
  std::vector<unsigned> host(count);
  if (auto status = cudaMemset(out, 0, count * sizeof(unsigned)); status != cudaSuccess) {
    error = describe("cudaMemset", status);
  } else if (status = cudaLaunchKernelEx(&config, write_pattern, out, kSalt); status != cudaSuccess) {
    error = describe("launch", status);  // the launch's own status, not an earlier call's
  } else if (status = cudaMemcpy(host.data(), out, count * sizeof(unsigned), cudaMemcpyDeviceToHost);
             status != cudaSuccess) {
    error = describe("kernel or copy", status);
  } else {
    for (std::size_t i = 0; i < count; ++i) {
      if (host[i] != (static_cast<unsigned>(i) * 2654435761u ^ kSalt)) {
        error = "self-test pattern wrong at element " + std::to_string(i);
        break;
      }
    }
  }
  cudaFree(out);
  return error;
}

}  // namespace ferry::kernels
