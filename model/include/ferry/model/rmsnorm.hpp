// RMSNorm: y = x · rstd · w with rstd = 1 / sqrt(mean(x²) + eps), per row of C values.
#pragma once

namespace ferry::model {

// x, out [n, C]; w [C]; rstd [n] is kept for the backward pass.
template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int n, int dim, double eps);

// dx += ∂L/∂x, dw += ∂L/∂w given dout = ∂L/∂y.
template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int n, int dim);

}  // namespace ferry::model
