// `ferry bench gpu-dispatch` (gpu_dispatch_bench.cpp): the CUDA executor on a virtual cluster of one GPU,
// next to the copy-kernel and device-copy bounds and, with --gemm, a GEMM's slowdown while it runs.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ferry::tools {

struct GpuDispatchArgs {
  int nodes = 2;
  int ranks_per_node = 2;
  std::int64_t tokens = 4096;
  std::int64_t hidden = 7168;
  int topk = 8;
  std::int64_t experts = 256;
  int max_nodes = 4;
  std::vector<int> sms = {4, 8, 12, 20, 24};
  int iters = 20;
  int warmup = 3;
  std::uint64_t seed = 1;
  bool gemm = false;
  int gemm_sms = 20;
  std::string json;
};

// Returns the process exit code (1 without a usable GPU, with the reason on stderr).
int run_gpu_dispatch_bench(const GpuDispatchArgs& args);

}  // namespace ferry::tools
