// A bias-free linear map y = x · W with W stored [in, out] row-major (one GEMM each way).
#pragma once

namespace ferry::model {

// x [n, in], w [in, out], y [n, out] (overwritten).
template <typename T>
void linear_forward(T* y, const T* x, const T* w, int n, int in, int out);

// dx += dy · Wᵀ (skipped when dx is nullptr); dw += xᵀ · dy.
template <typename T>
void linear_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, int n, int in, int out);

}  // namespace ferry::model
