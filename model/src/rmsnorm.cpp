#include "ferry/model/rmsnorm.hpp"

#include <cmath>
#include <cstddef>

namespace ferry::model {

template <typename T>
void rmsnorm_forward(T* out, T* rstd, const T* x, const T* w, int n, int dim, double eps) {
  for (int i = 0; i < n; ++i) {
    const T* xi = x + static_cast<std::size_t>(i) * dim;
    T* yi = out + static_cast<std::size_t>(i) * dim;
    T sum_sq = 0;
    for (int c = 0; c < dim; ++c) sum_sq += xi[c] * xi[c];
    const T r = T(1) / std::sqrt(sum_sq / T(dim) + T(eps));
    rstd[i] = r;
    for (int c = 0; c < dim; ++c) yi[c] = xi[c] * r * w[c];
  }
}

template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dout, const T* x, const T* w, const T* rstd, int n, int dim) {
  // y_c = w_c x_c r, r = (mean x² + eps)^-1/2, ∂r/∂x_k = -r³ x_k / C, hence
  // dx_k = r (w_k dy_k - x_k r² · mean_c(w_c dy_c x_c)).
  for (int i = 0; i < n; ++i) {
    const T* xi = x + static_cast<std::size_t>(i) * dim;
    const T* dyi = dout + static_cast<std::size_t>(i) * dim;
    T* dxi = dx + static_cast<std::size_t>(i) * dim;
    const T r = rstd[i];
    T dot = 0;
    for (int c = 0; c < dim; ++c) dot += w[c] * dyi[c] * xi[c];
    const T coeff = dot * r * r / T(dim);
    for (int c = 0; c < dim; ++c) {
      dxi[c] += r * (w[c] * dyi[c] - xi[c] * coeff);
      dw[c] += dyi[c] * xi[c] * r;
    }
  }
}

template void rmsnorm_forward<float>(float*, float*, const float*, const float*, int, int, double);
template void rmsnorm_forward<double>(double*, double*, const double*, const double*, int, int, double);
template void rmsnorm_backward<float>(float*, float*, const float*, const float*, const float*, const float*,
                                      int, int);
template void rmsnorm_backward<double>(double*, double*, const double*, const double*, const double*,
                                       const double*, int, int);

}  // namespace ferry::model
