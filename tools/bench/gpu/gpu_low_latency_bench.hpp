// `ferry bench gpu-low-latency` (gpu_low_latency_bench.cpp): the low-latency mode's CUDA executor on a
// virtual cluster of one GPU (every rank's kernels at once), per operation, next to the copy-kernel bound on
// as many SMs as its bulk phases use and a full-GPU device copy. The normal mode on the same shape is `ferry
// bench gpu-dispatch --tokens 128 ...` (scripts/gpu-check runs both).
#pragma once

#include <cstdint>
#include <string>

namespace ferry::tools {

struct GpuLowLatencyArgs {
  int nodes = 2;
  int ranks_per_node = 4;
  std::int64_t tokens = 128;
  std::int64_t hidden = 7168;
  int topk = 8;
  std::int64_t experts = 256;
  bool bf16 = false;  // dispatch bf16 rows (else fp8 with per-128 scales); combine is bf16 either way
  int blocks_per_rank = 4;
  int iters = 50;
  int warmup = 5;
  std::uint64_t seed = 1;
  std::string json;
};

// Returns the process exit code (1 without a usable GPU, with the reason on stderr).
int run_gpu_low_latency_bench(const GpuLowLatencyArgs& args);

}  // namespace ferry::tools
