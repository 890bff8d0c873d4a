// Shared dispatch benchmark options: see dispatch_options.hpp.
#include "bench/dispatch_options.hpp"

#include <algorithm>

namespace ferry::bench {

void add_routing_options(CLI::App& command, DispatchBenchOptions& options) {
  command.add_option("--tokens", options.tokens, "Tokens per rank")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  command.add_option("--hidden", options.hidden, "Hidden size (values per token row)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  command.add_option("--topk", options.topk, "Experts per token")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  command.add_option("--experts", options.experts, "Experts in total (a multiple of the ranks)")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  command.add_option("--max-nodes", options.max_nodes, "Nodes a token may touch")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  command.add_option("--num-sms", options.num_sms, "SM budget (channels = num_sms / 2)")
      ->check(CLI::Range(2, 1024))
      ->capture_default_str();
  command
      .add_option("--rdma-slots", options.rdma_slots,
                  "ferry: slots per (channel, node) fabric ring (0: default)")
      ->check(CLI::NonNegativeNumber);
  command.add_option("--rdma-chunk", options.rdma_chunk, "ferry: messages per fabric publish (0: default)")
      ->check(CLI::NonNegativeNumber);
  command
      .add_option("--nvl-slots", options.nvl_slots,
                  "ferry: slots per (channel, local rank) ring (0: default)")
      ->check(CLI::NonNegativeNumber);
  command.add_option("--nvl-chunk", options.nvl_chunk, "ferry: messages per node-ring publish (0: default)")
      ->check(CLI::NonNegativeNumber);
  command
      .add_option("--workers", options.workers, "ferry host backend: worker threads per rank (0: automatic)")
      ->check(CLI::NonNegativeNumber);
  command.add_flag("--fp8", options.fp8, "Send x as fp8 e4m3 with one fp32 scale per 128 values (else bf16)");
  command.add_option("--seed", options.seed, "Routing seed (same seed, same routing on every tool)")
      ->capture_default_str();
  command.add_option("--skew", options.skew, "0: uniform routing; > 0: expert e has popularity (e+1)^-skew")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command.add_option("--timeout", options.timeout_s, "Deadline of every wait, in seconds")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
}

void add_dispatch_options(CLI::App& command, DispatchBenchOptions& options) {
  add_routing_options(command, options);
  command.add_option("--iters", options.iters, "Timed iterations")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  command.add_option("--warmup", options.warmup, "Untimed iterations first")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
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
