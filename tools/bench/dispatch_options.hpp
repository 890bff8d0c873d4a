// The options `ferry bench dispatch|combine` and the MPI baseline share, so that one command line means the
// same problem (routing, sizes, iterations) for both.
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

#include "bench/routing_gen.hpp"

namespace ferry::bench {

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
