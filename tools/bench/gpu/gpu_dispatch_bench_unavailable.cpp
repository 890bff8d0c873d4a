// `ferry bench gpu-dispatch` in a build without CUDA.
#include <cstdio>

#include "bench/gpu/gpu_dispatch_bench.hpp"

namespace ferry::tools {

int run_gpu_dispatch_bench(const GpuDispatchArgs&) {
  std::fprintf(stderr, "bench gpu-dispatch: this build of ferry has no CUDA (configure with nvcc present)\n");
  return 1;
}

}  // namespace ferry::tools
