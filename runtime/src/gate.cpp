#include "ferry/gate.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "ferry/core/error.hpp"

namespace ferry {

namespace {

void check_config(const GateConfig& config, std::size_t scores, std::int64_t num_tokens, std::size_t bias) {
  auto bad = [](const std::string& what) { fail(Errc::invalid_argument, "gate: " + what); };
  if (config.num_experts <= 0) bad("num_experts must be positive, not " + std::to_string(config.num_experts));
  if (config.num_groups <= 0 || config.num_experts % config.num_groups != 0) {
    bad("num_groups " + std::to_string(config.num_groups) + " does not divide num_experts " +
        std::to_string(config.num_experts));
  }
  if (config.groups_per_token < 1 || config.groups_per_token > config.num_groups) {
    bad("groups_per_token " + std::to_string(config.groups_per_token) + " is not in [1, num_groups " +
        std::to_string(config.num_groups) + "]");
  }
  if (config.topk < 1 || config.topk % config.groups_per_token != 0) {
    bad("topk " + std::to_string(config.topk) + " is not a positive multiple of groups_per_token " +
        std::to_string(config.groups_per_token));
  }
  std::int64_t group_size = config.num_experts / config.num_groups;
  if (config.topk / config.groups_per_token > group_size) {
    bad("topk / groups_per_token = " + std::to_string(config.topk / config.groups_per_token) +
        " exceeds the group size " + std::to_string(group_size));
  }
  if (num_tokens < 0 || scores != static_cast<std::size_t>(num_tokens * config.num_experts)) {
    bad("scores has " + std::to_string(scores) + " values, not num_tokens x num_experts = " +
        std::to_string(num_tokens) + " x " + std::to_string(config.num_experts));
  }
  if (bias != 0 && bias != static_cast<std::size_t>(config.num_experts)) {
    bad("bias has " + std::to_string(bias) +
        " values, not num_experts = " + std::to_string(config.num_experts));
  }
}

// Indices [0, n) ordered by value descending, lower index first among equals; only the first `count` matter.
std::vector<std::int64_t> best(const std::vector<float>& values, int count) {
  std::vector<std::int64_t> order(values.size());
  std::iota(order.begin(), order.end(), 0);
  std::partial_sort(order.begin(), order.begin() + count, order.end(), [&](std::int64_t a, std::int64_t b) {
    return values[a] > values[b] || (values[a] == values[b] && a < b);
  });
  order.resize(count);
  return order;
}

}  // namespace

GateOutput node_limited_gate(std::span<const float> scores, std::int64_t num_tokens,
                             std::span<const float> bias, const GateConfig& config) {
  check_config(config, scores.size(), num_tokens, bias.size());
  for (std::size_t e = 0; e < bias.size(); ++e) {
    if (!std::isfinite(bias[e]))
      fail(Errc::invalid_argument, "gate: bias of expert " + std::to_string(e) + " is not finite");
  }
  const std::int64_t E = config.num_experts;
  const int G = config.num_groups;
  const std::int64_t group_size = E / G;
  const int per_group = config.topk / config.groups_per_token;
  GateOutput output;
  output.num_tokens = num_tokens;
  output.topk = config.topk;
  output.topk_idx.resize(num_tokens * config.topk);
  output.topk_weights.resize(num_tokens * config.topk);

  std::vector<float> unbiased(E), selection(E), group_scores(G), group_values(group_size), candidates(E);
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    for (std::int64_t e = 0; e < E; ++e) {
      float value = scores[t * E + e];
      if (!std::isfinite(value)) {
        fail(Errc::invalid_argument, "gate: score of token " + std::to_string(t) + " for expert " +
                                         std::to_string(e) + " is not finite");
      }
      unbiased[e] = config.scores_are_logits ? 1.0f / (1.0f + std::exp(-value)) : value;
      selection[e] = unbiased[e] + (bias.empty() ? 0.0f : bias[e]);
    }
    for (int g = 0; g < G; ++g) {
      std::copy_n(selection.begin() + g * group_size, group_size, group_values.begin());
      float sum = 0.0f;
      for (std::int64_t i : best(group_values, per_group)) sum += group_values[i];
      group_scores[g] = sum;
    }
    // Experts outside the kept groups cannot be chosen.
    std::fill(candidates.begin(), candidates.end(), -INFINITY);
    for (std::int64_t g : best(group_scores, config.groups_per_token)) {
      std::copy_n(selection.begin() + g * group_size, group_size, candidates.begin() + g * group_size);
    }
    std::vector<std::int64_t> chosen = best(candidates, config.topk);
    float total = 0.0f;
    for (std::int64_t e : chosen) total += unbiased[e];
    for (int k = 0; k < config.topk; ++k) {
      output.topk_idx[t * config.topk + k] = chosen[k];
      output.topk_weights[t * config.topk + k] = unbiased[chosen[k]] / (total + 1e-20f) * config.route_scale;
    }
  }
  return output;
}

}  // namespace ferry
