// `ferry bench gpu-low-latency` in a build without CUDA.
#include <cstdio>

#include "bench/gpu/gpu_low_latency_bench.hpp"

namespace ferry::tools {

int run_gpu_low_latency_bench(const GpuLowLatencyArgs&) {
  std::fprintf(stderr,
               "bench gpu-low-latency: this build of ferry has no CUDA (configure with nvcc present)\n");
  return 1;
}

}  // namespace ferry::tools
