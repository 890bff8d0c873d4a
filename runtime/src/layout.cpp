#include "ferry/layout.hpp"

#include <string>

#include "ferry/core/error.hpp"
#include "ferry/kernels/protocol/routing.hpp"

namespace ferry {

namespace {

namespace p = kernels::protocol;

std::string node_list(std::uint64_t mask) {
  std::string text;
  for (int node = 0; node < p::kMaxNodes; ++node) {
    if (!(mask >> node & 1u)) continue;
    text += (text.empty() ? "" : ", ") + std::to_string(node);
  }
  return text;
}

void check_arguments(const TensorView& topk_idx, std::int64_t num_experts, int num_ranks, int local_size,
                     int max_nodes) {
  if (topk_idx.dim() != 2 || topk_idx.dtype() != DType::int64 || topk_idx.device() != Device::host) {
    fail(Errc::invalid_argument, "topk_idx must be a [T, K] int64 host tensor, not " + topk_idx.describe());
  }
  if (topk_idx.numel() > 0 && topk_idx.data() == nullptr)
    fail(Errc::invalid_argument, "topk_idx has no data");
  if (local_size < 1 || num_ranks < local_size || num_ranks % local_size != 0) {
    fail(Errc::invalid_argument, std::to_string(num_ranks) + " ranks cannot form nodes of " +
                                     std::to_string(local_size) + " local ranks");
  }
  if (num_ranks / local_size > p::kMaxNodes) {
    fail(Errc::invalid_argument, std::to_string(num_ranks / local_size) + " nodes: ferry supports at most " +
                                     std::to_string(p::kMaxNodes));
  }
  if (num_experts <= 0 || num_experts % num_ranks != 0) {
    fail(Errc::invalid_argument, "num_experts " + std::to_string(num_experts) +
                                     " is not a positive multiple of the " + std::to_string(num_ranks) +
                                     " ranks (experts are split evenly over ranks)");
  }
  if (max_nodes < 1) fail(Errc::invalid_argument, "max_nodes must be >= 1, not " + std::to_string(max_nodes));
}

}  // namespace

Layout compute_layout(const TensorView& topk_idx, std::int64_t num_experts, int num_ranks, int local_size,
                      int max_nodes) {
  check_arguments(topk_idx, num_experts, num_ranks, local_size, max_nodes);
  Layout layout;
  layout.num_tokens = topk_idx.size(0);
  layout.num_topk = static_cast<int>(topk_idx.size(1));
  layout.num_experts = num_experts;
  layout.num_ranks = num_ranks;
  layout.local_size = local_size;
  layout.tokens_per_rank.assign(num_ranks, 0);
  layout.tokens_per_node.assign(num_ranks / local_size, 0);
  layout.tokens_per_expert.assign(num_experts, 0);
  layout.is_token_in_rank.assign(layout.num_tokens * num_ranks, 0);

  if (layout.num_topk > num_experts) {
    fail(Errc::invalid_argument, "topk_idx has " + std::to_string(layout.num_topk) +
                                     " slots per token but there are only " + std::to_string(num_experts) +
                                     " experts");
  }
  const p::Topology topo{num_ranks / local_size, local_size, 1};
  const p::ExpertSplit split{num_experts, num_experts / num_ranks};
  const auto* rows = topk_idx.data_as<const std::int64_t>();
  const int K = layout.num_topk;
  for (std::int64_t t = 0; t < layout.num_tokens; ++t) {
    const std::int64_t* row = rows + t * K;
    p::TokenRoute route = p::route_token(row, K, split, topo);
    if (!route.valid()) {
      fail(Errc::invalid_argument, "topk_idx[" + std::to_string(t) + "][" + std::to_string(route.bad_slot) +
                                       "] = " + std::to_string(row[route.bad_slot]) +
                                       " is out of range: experts are [0, " + std::to_string(num_experts) +
                                       ") and -1 marks an empty slot");
    }
    if (route.num_nodes() > max_nodes) {
      fail(Errc::invalid_argument,
           "token " + std::to_string(t) + " touches " + std::to_string(route.num_nodes()) + " nodes (" +
               node_list(route.node_mask) + ") but max_nodes is " + std::to_string(max_nodes));
    }
    for (int k = 1; k < K; ++k) {
      if (row[k] < 0) continue;
      for (int j = 0; j < k; ++j) {
        if (row[j] != row[k]) continue;
        fail(Errc::invalid_argument, "token " + std::to_string(t) + " names expert " +
                                         std::to_string(row[k]) + " twice (topk_idx slots " +
                                         std::to_string(j) + " and " + std::to_string(k) + ")");
      }
    }
    std::uint8_t* in_rank = &layout.is_token_in_rank[t * num_ranks];
    for (int k = 0; k < K; ++k) {
      if (row[k] < 0) continue;
      ++layout.tokens_per_expert[row[k]];
      in_rank[split.rank_of(row[k])] = 1;
    }
    for (int r = 0; r < num_ranks; ++r) layout.tokens_per_rank[r] += in_rank[r];
    for (int n = 0; n < topo.num_nodes; ++n) layout.tokens_per_node[n] += route.node_mask >> n & 1u;
  }
  return layout;
}

}  // namespace ferry
