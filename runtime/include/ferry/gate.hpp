// The DeepSeek-V3 gate: node-limited top-k routing (REFERENCES.md "DeepSeek-V3 MoE").
//
// For each token: scores s = sigmoid(logits) (or given), selection scores b = s + bias (the bias steers only the
// choice, for auxiliary-loss-free balancing). Experts form num_groups equal contiguous groups — the nodes, when
// experts are split over ranks as ferry does — and a group's score is the sum of its best topk/groups_per_token
// selection scores. The best groups_per_token groups are kept, the best topk experts inside them chosen, and
// their weights are the unbiased scores normalised to sum 1 (plus 1e-20 against division by zero) times
// route_scale. Ties go to the lower index, so routing is deterministic. Slots are in selection order.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

namespace ferry {

struct GateConfig {
  std::int64_t num_experts = 0;
  int num_groups = 1;        // groups of experts (nodes); must divide num_experts
  int groups_per_token = 1;  // groups a token may use (DeepSeek-V3: 4 of 8); must divide topk
  int topk = 1;              // experts per token
  float route_scale = 1.0f;
  bool scores_are_logits = false;  // true: apply the sigmoid to `scores` first
};

struct GateOutput {
  std::int64_t num_tokens = 0;
  int topk = 0;
  std::vector<std::int64_t> topk_idx;  // [T * K]
  std::vector<float> topk_weights;     // [T * K]
};

// scores: [T * E] row-major; bias: [E] or empty. Throws Errc::invalid_argument for an inconsistent config or
// sizes, or a score that is not finite (naming token and expert).
GateOutput node_limited_gate(std::span<const float> scores, std::int64_t num_tokens, std::span<const float> bias,
                             const GateConfig& config);

}  // namespace ferry
