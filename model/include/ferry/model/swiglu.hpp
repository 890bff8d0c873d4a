// SwiGLU feed-forward: y = (silu(x W1) ⊙ x W3) W2, the dense FFN, the shared expert and every routed expert.
// W1 and W3 are fused into one [C, 2H] matrix (W1's columns first) so the up projection is one GEMM.
#pragma once

#include <vector>

namespace ferry::model {

template <typename T>
struct SwiGLUActs {
  std::vector<T> h;  // [n, 2H]: x W1 | x W3 before the activation
  std::vector<T> a;  // [n, H]: silu(x W1) ⊙ x W3
  // backward scratch
  std::vector<T> da, dh;
};

// x [n, C], w13 [C, 2H], w2 [H, C], y [n, C] (overwritten). n may be 0 (an expert that got no token).
template <typename T>
void swiglu_forward(T* y, SwiGLUActs<T>& acts, const T* x, const T* w13, const T* w2, int n, int dim,
                    int hidden);

// dx += ∂L/∂x (skipped when nullptr), dw13 and dw2 += their gradients, given dy.
template <typename T>
void swiglu_backward(T* dx, T* dw13, T* dw2, const T* dy, SwiGLUActs<T>& acts, const T* x, const T* w13,
                     const T* w2, int n, int dim, int hidden);

}  // namespace ferry::model
