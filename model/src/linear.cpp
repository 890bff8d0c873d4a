#include "ferry/model/linear.hpp"

#include <type_traits>

#include "ferry/model/gemm.hpp"
#include "ferry/model/pipeline/weight_grad.hpp"

namespace ferry::model {

template <typename T>
void linear_forward(T* y, const T* x, const T* w, int n, int in, int out) {
  gemm<T>(false, false, n, out, in, T(1), x, in, w, out, T(0), y, out);
}

template <typename T>
void linear_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, int n, int in, int out) {
  if (dx) gemm<T>(false, true, n, in, out, T(1), dy, out, w, out, T(1), dx, in);
  if constexpr (std::is_same_v<T, float>) {
    // A zero-bubble pipeline's B pass: the weight gradient waits for its W pass (pipeline/weight_grad.hpp).
    if (pipeline::WeightGradQueue* queue = pipeline::deferred_weight_grads()) {
      queue->defer_linear(dw, x, dy, n, in, out);
      return;
    }
  }
  gemm<T>(true, false, in, out, n, T(1), x, in, dy, out, T(1), dw, out);
}

template void linear_forward<float>(float*, const float*, const float*, int, int, int);
template void linear_forward<double>(double*, const double*, const double*, int, int, int);
template void linear_backward<float>(float*, float*, const float*, const float*, const float*, int, int, int);
template void linear_backward<double>(double*, double*, const double*, const double*, const double*, int, int,
                                      int);

}  // namespace ferry::model
