// The MoE gate, as DeepSeek-V3 routes: sigmoid scores s = σ(x · Wg); experts are *selected* by s + bias
// (the bias only steers selection: it balances load without a loss); selection is node-limited: experts form
// G groups, each group is scored by the sum of its top-(K/M) biased scores, the best M groups are kept and
// the top K experts inside them chosen. The *weights* are the unbiased scores of the chosen experts,
// normalised to sum to 1 and multiplied by route_scale; gradients reach the gate through the weights only.
#pragma once

#include <cstddef>

namespace ferry::model {

struct RouterShape {
  int experts = 8;
  int topk = 2;
  int groups = 1;
  int max_groups = 1;
  double route_scale = 1.0;

  // How many of a group's best scores add up to its group score: K / M (at least 1, at most the group size).
  int group_topk() const;
  void validate() const;
};

// s = σ(logits), elementwise over count values.
template <typename T>
void gate_scores(T* s, const T* logits, std::size_t count);

// dlogits += ds · s (1 - s).
template <typename T>
void gate_scores_backward(T* dlogits, const T* ds, const T* s, std::size_t count);

// s [n, E], bias [E] → idx [n, K], each row ordered by biased score, best first; ties go to the lower expert
// (and group) index, so routing is deterministic. Throws invalid_argument naming the token on a NaN score.
template <typename T>
void route_select(int* idx, const T* s, const T* bias, int n, const RouterShape& shape);

// w [n, K] = route_scale · s[idx] / Σ_k s[idx_k].
template <typename T>
void route_weights(T* w, const int* idx, const T* s, int n, const RouterShape& shape);

// ds [n, E] += ∂L/∂s through the weights, given dw = ∂L/∂w [n, K]. Only the chosen columns receive gradient.
template <typename T>
void route_weights_backward(T* ds, const T* dw, const int* idx, const T* s, int n, const RouterShape& shape);

// The smallest change of biased scores that could alter route_select's choice: over all tokens, the gap
// between the M-th and (M+1)-th group score and between the K-th chosen and the best unchosen expert of the
// kept groups. Gradient checks use it to prove that their perturbations leave the routing alone.
template <typename T>
double selection_margin(const T* s, const T* bias, int n, const RouterShape& shape);

}  // namespace ferry::model
