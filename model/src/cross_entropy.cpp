#include "ferry/model/cross_entropy.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>

namespace ferry::model {

template <typename T>
T cross_entropy_forward(T* probs, const T* logits, const int* targets, int n, int vocab) {
  double total = 0;  // a sum of many terms: double keeps the float model's loss exact enough to compare
  for (int i = 0; i < n; ++i) {
    const T* l = logits + static_cast<std::size_t>(i) * vocab;
    T* p = probs + static_cast<std::size_t>(i) * vocab;
    const T max = *std::max_element(l, l + vocab);
    T sum = 0;
    for (int v = 0; v < vocab; ++v) {
      p[v] = std::exp(l[v] - max);
      sum += p[v];
    }
    const T inv = T(1) / sum;
    for (int v = 0; v < vocab; ++v) p[v] *= inv;
    // -log p[target] computed from the logits, not from the rounded probability.
    total += static_cast<double>(std::log(sum) - (l[targets[i]] - max));
  }
  return static_cast<T>(total / n);
}

template <typename T>
void cross_entropy_backward(T* dlogits, const T* probs, const int* targets, int n, int vocab, T dloss) {
  const T scale = dloss / T(n);
  for (int i = 0; i < n; ++i) {
    const T* p = probs + static_cast<std::size_t>(i) * vocab;
    T* d = dlogits + static_cast<std::size_t>(i) * vocab;
    for (int v = 0; v < vocab; ++v) d[v] += scale * p[v];
    d[targets[i]] -= scale;
  }
}

template float cross_entropy_forward<float>(float*, const float*, const int*, int, int);
template double cross_entropy_forward<double>(double*, const double*, const int*, int, int);
template void cross_entropy_backward<float>(float*, const float*, const int*, int, int, float);
template void cross_entropy_backward<double>(double*, const double*, const int*, int, int, double);

}  // namespace ferry::model
