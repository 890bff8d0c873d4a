// The dispatch layout: where each token goes, computed locally from the routing (DeepEP's
// get_dispatch_layout).
//
// Experts are split evenly over the ranks: rank r owns experts [r * E/R, (r+1) * E/R); a token goes to every
// rank that owns one of its topk experts (once per rank, however many of its experts live there).
//
//   ferry::Layout layout = ferry::compute_layout(topk_idx, num_experts, /*num_ranks=*/16, /*local_size=*/8,
//                                                /*max_nodes=*/4);
//   layout.tokens_per_rank[r];  layout.in_rank(t, r);
#pragma once

#include <cstdint>
#include <vector>

#include "ferry/tensor.hpp"

namespace ferry {

struct Layout {
  std::int64_t num_tokens = 0;
  int num_topk = 0;
  std::int64_t num_experts = 0;
  int num_ranks = 0;
  int local_size = 0;
  std::vector<std::int64_t> tokens_per_rank;    // [R] tokens that go to rank r
  std::vector<std::int64_t> tokens_per_node;    // [N] tokens that go to some rank of node n
  std::vector<std::int64_t> tokens_per_expert;  // [E] topk slots that name expert e
  std::vector<std::uint8_t> is_token_in_rank;   // [T * R] 1 when token t goes to rank r (host layouts)
  Tensor is_token_in_rank_device;  // [T, R] uint8 on the GPU (layouts a CUDA Buffer computed there)

  int num_nodes() const { return local_size > 0 ? num_ranks / local_size : 0; }
  bool in_rank(std::int64_t token, int rank) const { return is_token_in_rank[token * num_ranks + rank] != 0; }
  bool on_device() const { return is_token_in_rank_device.data() != nullptr; }
};

// topk_idx: [T, K] int64 on the host, -1 = empty slot. Throws Errc::invalid_argument when num_experts is not
// a positive multiple of num_ranks, when an expert id is out of range (naming token, slot and id), or when a
// token touches more than max_nodes nodes (naming the token and its nodes).
Layout compute_layout(const TensorView& topk_idx, std::int64_t num_experts, int num_ranks, int local_size,
                      int max_nodes);

}  // namespace ferry
