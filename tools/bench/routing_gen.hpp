// Synthetic node-limited top-k routings for the dispatch benchmarks, in plain C++ (no ferry dependency) so
// that the MPI baseline compiles the same generator and sees the same routing for the same (seed, rank).
//
// Experts are laid out contiguously: rank r owns experts [r*E/R, (r+1)*E/R) and node n the experts of its
// ranks, as ferry's layout assumes. Each token first picks min(max_nodes, N) distinct nodes, then topk
// distinct experts inside them (DeepSeek-V3's group-limited gate). skew = 0 is uniform; skew > 0 gives expert
// e the popularity (e + 1)^-skew, so low-numbered experts (rank 0, node 0) receive most of the load, and a
// node's popularity is the sum of its experts'.
#pragma once

#include <cstdint>
#include <vector>

namespace ferry::bench {

struct RoutingSpec {
  std::int64_t num_tokens = 0;
  int topk = 1;
  std::int64_t num_experts = 1;
  int num_ranks = 1;
  int local_size = 1;  // ranks per node
  int max_nodes = 1;   // nodes a token may touch
  double skew = 0.0;
  std::uint64_t seed = 0;

  int num_nodes() const { return num_ranks / local_size; }
  std::int64_t experts_per_rank() const { return num_experts / num_ranks; }
  std::int64_t experts_per_node() const { return experts_per_rank() * local_size; }
};

struct Routing {
  std::int64_t num_tokens = 0;
  int topk = 0;
  std::vector<std::int64_t> topk_idx;  // [T * K], every slot a distinct expert
  std::vector<float> topk_weights;     // [T * K], exact binary fractions
};

// Throws std::invalid_argument naming the field when the spec is inconsistent (experts not a multiple of
// ranks, topk larger than the experts of the nodes a token may use, ...).
void validate(const RoutingSpec& spec);

// The routing of `rank`'s tokens: a pure function of (spec, rank).
Routing generate_routing(const RoutingSpec& spec, int rank);

// The weight of slot k (the same for every token; exact in fp32 and bf16).
float routing_weight(int slot);

// Distinct nodes / ranks one token's experts live on, as a bitmask-free count.
int distinct_nodes(const RoutingSpec& spec, const std::int64_t* token_experts);
int distinct_ranks(const RoutingSpec& spec, const std::int64_t* token_experts);

}  // namespace ferry::bench
