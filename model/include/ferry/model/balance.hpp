// Load balancing of the routed experts, both DeepSeek-V3 mechanisms:
//  - auxiliary-loss-free: after each step bias_e += γ · sign(mean_load - load_e), so overloaded experts get
//    selected less and idle ones more, without a gradient that fights the language-model loss;
//  - a small sequence-wise balance loss L = α · mean_b Σ_e f_{b,e} P_{b,e}, with
//    f_{b,e} = E / (K T) · #{t in sequence b routed to e} (a constant: selection is not differentiable) and
//    P_{b,e} = mean_t s'_{t,e}, s' = s normalised over all experts of the token.
#pragma once

#include <cstdint>
#include <vector>

namespace ferry::model {

// Returns L; writes f [B, E] for the backward pass. s [B*T, E], idx [B*T, K].
template <typename T>
T balance_loss_forward(T* f, const T* s, const int* idx, int batch, int seq, int experts, int topk,
                       double alpha);

// ds [B*T, E] += dloss · ∂L/∂s.
template <typename T>
void balance_loss_backward(T* ds, T dloss, const T* f, const T* s, int batch, int seq, int experts,
                           double alpha);

// Tokens per expert in one step of one MoE layer.
struct ExpertLoad {
  std::vector<std::int64_t> counts;  // [E]

  double mean() const;  // = tokens · K / E
  std::int64_t max() const;
  // max / mean: 1 is perfect balance, E / K is every token on the same K experts.
  double max_over_mean() const;
};

ExpertLoad count_expert_load(const int* idx, int n, int topk, int experts);

// bias_e += γ · sign(mean - count_e). Returns nothing; γ = 0 leaves bias untouched.
template <typename T>
void update_balance_bias(T* bias, const ExpertLoad& load, double gamma);

}  // namespace ferry::model
