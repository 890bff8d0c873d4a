#include "ferry/model/linear.hpp"

#include "ferry/model/gemm.hpp"

namespace ferry::model {

template <typename T>
void linear_forward(T* y, const T* x, const T* w, int n, int in, int out) {
  gemm<T>(false, false, n, out, in, T(1), x, in, w, out, T(0), y, out);
}

template <typename T>
void linear_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, int n, int in, int out) {
  if (dx) gemm<T>(false, true, n, in, out, T(1), dy, out, w, out, T(1), dx, in);
  gemm<T>(true, false, in, out, n, T(1), x, in, dy, out, T(1), dw, out);
}

template void linear_forward<float>(float*, const float*, const float*, int, int, int);
template void linear_forward<double>(double*, const double*, const double*, int, int, int);
template void linear_backward<float>(float*, float*, const float*, const float*, const float*, int, int, int);
template void linear_backward<double>(double*, double*, const double*, const double*, const double*, int, int,
                                      int);

}  // namespace ferry::model
