// Catch2 main for GPU tests: exits 77 (ctest: skipped) with the reason when this machine has no usable GPU.
#define CATCH_CONFIG_RUNNER
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cstdio>

int main(int argc, char** argv) {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);  // leaves `count` alone on failure: check the status
  if (status != cudaSuccess || count == 0) {
    std::printf("skipped: no GPU (cudaGetDeviceCount: %s, %d devices)\n",
                status == cudaSuccess ? "ok" : cudaGetErrorName(status), status == cudaSuccess ? count : 0);
    return 77;
  }
  return Catch::Session().run(argc, argv);
}
