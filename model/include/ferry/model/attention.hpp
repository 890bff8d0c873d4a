// Causal multi-head self-attention without positional rotation (positions come from the learned wpe):
//   qkv = x · Wqkv, per head P = softmax_causal(q kᵀ / sqrt(hs)), ctx = P · v, out = ctx · Wo.
#pragma once

#include <vector>

namespace ferry::model {

// What the forward pass keeps for the backward pass, plus backward scratch (reused between calls).
template <typename T>
struct AttentionActs {
  std::vector<T> qkv;  // [B, T, 3C]: q | k | v, head h at columns h·hs of each third
  std::vector<T> att;  // [B, NH, T, T]: softmax probabilities, zero above the diagonal
  std::vector<T> ctx;  // [B, T, C]: P · v for all heads, before the output projection
  // backward scratch
  std::vector<T> dctx, dqkv, datt;
};

// x, out [B, T, C]; wqkv [C, 3C]; wo [C, C].
template <typename T>
void attention_forward(T* out, AttentionActs<T>& acts, const T* x, const T* wqkv, const T* wo, int batch,
                       int seq, int dim, int heads);

// dx += ∂L/∂x, dwqkv += ∂L/∂Wqkv, dwo += ∂L/∂Wo given dout.
template <typename T>
void attention_backward(T* dx, T* dwqkv, T* dwo, const T* dout, AttentionActs<T>& acts, const T* x,
                        const T* wqkv, const T* wo, int batch, int seq, int dim, int heads);

}  // namespace ferry::model
