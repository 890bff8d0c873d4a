#include "ferry/model/embedding.hpp"

#include <cstddef>

namespace ferry::model {

template <typename T>
void embedding_forward(T* out, const int* tokens, const T* wte, const T* wpe, int batch, int seq, int dim) {
  for (int b = 0; b < batch; ++b) {
    for (int t = 0; t < seq; ++t) {
      const std::size_t n = static_cast<std::size_t>(b) * seq + t;
      const T* e = wte + static_cast<std::size_t>(tokens[n]) * dim;
      T* o = out + n * dim;
      if (wpe) {
        const T* p = wpe + static_cast<std::size_t>(t) * dim;
        for (int c = 0; c < dim; ++c) o[c] = e[c] + p[c];
      } else {
        for (int c = 0; c < dim; ++c) o[c] = e[c];
      }
    }
  }
}

template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int* tokens, int batch, int seq, int dim) {
  for (int b = 0; b < batch; ++b) {
    for (int t = 0; t < seq; ++t) {
      const std::size_t n = static_cast<std::size_t>(b) * seq + t;
      const T* d = dout + n * dim;
      T* de = dwte + static_cast<std::size_t>(tokens[n]) * dim;
      for (int c = 0; c < dim; ++c) de[c] += d[c];
      if (dwpe) {
        T* dp = dwpe + static_cast<std::size_t>(t) * dim;
        for (int c = 0; c < dim; ++c) dp[c] += d[c];
      }
    }
  }
}

template void embedding_forward<float>(float*, const int*, const float*, const float*, int, int, int);
template void embedding_forward<double>(double*, const int*, const double*, const double*, int, int, int);
template void embedding_backward<float>(float*, float*, const float*, const int*, int, int, int);
template void embedding_backward<double>(double*, double*, const double*, const int*, int, int, int);

}  // namespace ferry::model
