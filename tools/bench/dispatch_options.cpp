// Shared dispatch benchmark options: see dispatch_options.hpp.
#include "bench/dispatch_options.hpp"

#include <algorithm>

#include "cli/bounds.hpp"

namespace ferry::bench {

void add_routing_options(CLI::App& command, DispatchBenchOptions& options) {
  using tools::cli::add_count;
  add_count(command, "--tokens", options.tokens, 1, kMaxTokens, "Tokens per rank");
  add_count(command, "--hidden", options.hidden, 1, kMaxHidden, "Hidden size (values per token row)");
  add_count(command, "--topk", options.topk, 1, kMaxTopk, "Experts per token");
  add_count(command, "--experts", options.experts, 1, kMaxExperts,
            "Experts in total (a multiple of the ranks)");
  add_count(command, "--max-nodes", options.max_nodes, 1, kMaxNodes, "Nodes a token may touch");
  add_count(command, "--num-sms", options.num_sms, 2, kMaxSms, "SM budget (channels = num_sms / 2)");
  add_count(command, "--rdma-slots", options.rdma_slots, 0, kMaxRingSetting,
            "ferry: slots per (channel, node) fabric ring (0: default)");
  add_count(command, "--rdma-chunk", options.rdma_chunk, 0, kMaxRingSetting,
            "ferry: messages per fabric publish (0: default)");
  add_count(command, "--nvl-slots", options.nvl_slots, 0, kMaxRingSetting,
            "ferry: slots per (channel, local rank) ring (0: default)");
  add_count(command, "--nvl-chunk", options.nvl_chunk, 0, kMaxRingSetting,
            "ferry: messages per node-ring publish (0: default)");
  add_count(command, "--workers", options.workers, 0, kMaxWorkers,
            "ferry host backend: worker threads per rank (0: automatic)");
  command.add_flag("--fp8", options.fp8, "Send x as fp8 e4m3 with one fp32 scale per 128 values (else bf16)");
  command.add_option("--seed", options.seed, "Routing seed (same seed, same routing on every tool)")
      ->capture_default_str();
  command.add_option("--skew", options.skew, "0: uniform routing; > 0: expert e has popularity (e+1)^-skew")
      ->check(tools::cli::number_in(0, kMaxSkew))
      ->capture_default_str();
  command.add_option("--timeout", options.timeout_s, "Deadline of every wait, in seconds")
      ->check(tools::cli::seconds_up_to())
      ->capture_default_str();
}

void add_dispatch_options(CLI::App& command, DispatchBenchOptions& options) {
  add_routing_options(command, options);
  tools::cli::add_count(command, "--iters", options.iters, 1, kMaxIters, "Timed iterations");
  tools::cli::add_count(command, "--warmup", options.warmup, 0, kMaxIters, "Untimed iterations first");
  command.add_flag("--check", options.check,
                   "Verify every received row, topk and count, the combined output, and the fabric rule");
  command.add_option("--json", options.json, "Write the report as JSON to this file (rank 0)");
}

RoutingSpec routing_spec(const DispatchBenchOptions& options, int num_ranks, int local_size) {
  RoutingSpec spec;
  spec.num_tokens = options.tokens;
  spec.topk = options.topk;
  spec.num_experts = options.experts;
  spec.num_ranks = num_ranks;
  spec.local_size = local_size;
  spec.max_nodes = std::min(options.max_nodes, num_ranks / std::max(local_size, 1));
  spec.skew = options.skew;
  spec.seed = options.seed;
  return spec;
}

}  // namespace ferry::bench
