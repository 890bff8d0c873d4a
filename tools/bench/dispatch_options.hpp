// The options `ferry bench dispatch|combine` and the MPI baseline share, so that one command line means the
// same problem (routing, sizes, iterations) for both.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "bench/routing_gen.hpp"

namespace ferry::bench {

// The ranges of the problem's flags: generous for any MoE layer (DeepSeek-V3: hidden 7168, 256 experts,
// top-8, 4096 tokens per rank), the runtime's own limits where it has them (Config::max_topk, the protocol's
// 64 nodes). The memory they need together is checked before any work (dispatch_bench.cpp).
inline constexpr std::int64_t kMaxTokens = std::int64_t{1} << 20;
inline constexpr std::int64_t kMaxHidden = std::int64_t{1} << 16;
inline constexpr std::int64_t kMaxExperts = std::int64_t{1} << 16;
inline constexpr int kMaxTopk = 255;
inline constexpr int kMaxNodes = 64;
inline constexpr int kMaxSms = 1024;
inline constexpr int kMaxRingSetting = 1 << 16;  // ring slots and chunks
inline constexpr int kMaxWorkers = 1024;
inline constexpr int kMaxIters = 1000000;
inline constexpr double kMaxSkew = 100;

struct DispatchBenchOptions {
  std::int64_t tokens = 4096;
  std::int64_t hidden = 7168;
  int topk = 8;
  std::int64_t experts = 64;
  int max_nodes = 4;
  int num_sms = 20;
  bool fp8 = false;
  int iters = 10;
  int warmup = 2;
  std::uint64_t seed = 1;
  double skew = 0.0;
  bool check = false;
  std::string json;
  double timeout_s = 100;
  // ferry's ring geometry and host workers (0: ferry::Config's defaults); the MPI baseline ignores them.
  int rdma_slots = 0;
  int rdma_chunk = 0;
  int nvl_slots = 0;
  int nvl_chunk = 0;
  int workers = 0;
};

// The problem and ferry's settings: sizes, routing, num_sms, rings, workers, fp8, seed, skew, timeout.
void add_routing_options(CLI::App& command, DispatchBenchOptions& options);
// add_routing_options() and the benchmark's own: iterations, warm-up, --check, --json.
void add_dispatch_options(CLI::App& command, DispatchBenchOptions& options);

// The routing problem these options describe on a job of num_ranks = nodes x local_size.
RoutingSpec routing_spec(const DispatchBenchOptions& options, int num_ranks, int local_size);

}  // namespace ferry::bench
