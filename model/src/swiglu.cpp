#include "ferry/model/swiglu.hpp"

#include <cmath>
#include <cstddef>

#include "ferry/model/linear.hpp"

namespace ferry::model {

namespace {

template <typename T>
T sigmoid(T v) {
  return T(1) / (T(1) + std::exp(-v));
}

}  // namespace

template <typename T>
void swiglu_forward(T* y, SwiGLUActs<T>& acts, const T* x, const T* w13, const T* w2, int n, int dim,
                    int hidden) {
  const std::size_t rows = static_cast<std::size_t>(n);
  acts.h.resize(rows * 2 * hidden);
  acts.a.resize(rows * hidden);
  if (n == 0) return;
  linear_forward(acts.h.data(), x, w13, n, dim, 2 * hidden);
  for (std::size_t i = 0; i < rows; ++i) {
    const T* g = acts.h.data() + i * 2 * hidden;
    const T* u = g + hidden;
    T* a = acts.a.data() + i * hidden;
    for (int j = 0; j < hidden; ++j) a[j] = g[j] * sigmoid(g[j]) * u[j];
  }
  linear_forward(y, acts.a.data(), w2, n, hidden, dim);
}

template <typename T>
void swiglu_backward(T* dx, T* dw13, T* dw2, const T* dy, SwiGLUActs<T>& acts, const T* x, const T* w13,
                     const T* w2, int n, int dim, int hidden) {
  if (n == 0) return;
  const std::size_t rows = static_cast<std::size_t>(n);
  acts.da.assign(rows * hidden, T(0));
  acts.dh.resize(rows * 2 * hidden);
  linear_backward(acts.da.data(), dw2, dy, acts.a.data(), w2, n, hidden, dim);
  for (std::size_t i = 0; i < rows; ++i) {
    const T* g = acts.h.data() + i * 2 * hidden;
    const T* u = g + hidden;
    const T* da = acts.da.data() + i * hidden;
    T* dg = acts.dh.data() + i * 2 * hidden;
    T* du = dg + hidden;
    for (int j = 0; j < hidden; ++j) {
      // silu(g) = g σ(g), silu'(g) = σ(g) (1 + g (1 - σ(g))).
      const T s = sigmoid(g[j]);
      du[j] = da[j] * g[j] * s;
      dg[j] = da[j] * u[j] * s * (T(1) + g[j] * (T(1) - s));
    }
  }
  linear_backward(dx, dw13, acts.dh.data(), x, w13, n, dim, 2 * hidden);
}

template void swiglu_forward<float>(float*, SwiGLUActs<float>&, const float*, const float*, const float*, int,
                                    int, int);
template void swiglu_forward<double>(double*, SwiGLUActs<double>&, const double*, const double*,
                                     const double*, int, int, int);
template void swiglu_backward<float>(float*, float*, float*, const float*, SwiGLUActs<float>&, const float*,
                                     const float*, const float*, int, int, int);
template void swiglu_backward<double>(double*, double*, double*, const double*, SwiGLUActs<double>&,
                                      const double*, const double*, const double*, int, int, int);

}  // namespace ferry::model
