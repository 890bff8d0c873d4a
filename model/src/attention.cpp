#include "ferry/model/attention.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "ferry/model/gemm.hpp"
#include "ferry/model/linear.hpp"

namespace ferry::model {

template <typename T>
void attention_forward(T* out, AttentionActs<T>& acts, const T* x, const T* wqkv, const T* wo, int batch,
                       int seq, int dim, int heads) {
  const int n = batch * seq, hs = dim / heads, c3 = 3 * dim;
  const std::size_t tt = static_cast<std::size_t>(seq) * seq;
  acts.qkv.resize(static_cast<std::size_t>(n) * c3);
  acts.att.resize(static_cast<std::size_t>(batch) * heads * tt);
  acts.ctx.resize(static_cast<std::size_t>(n) * dim);
  linear_forward(acts.qkv.data(), x, wqkv, n, dim, c3);

  const T scale = T(1) / std::sqrt(T(hs));
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < heads; ++h) {
      const T* q = acts.qkv.data() + static_cast<std::size_t>(b) * seq * c3 + h * hs;
      const T* k = q + dim;
      const T* v = q + 2 * dim;
      T* p = acts.att.data() + (static_cast<std::size_t>(b) * heads + h) * tt;
      gemm<T>(false, true, seq, seq, hs, scale, q, c3, k, c3, T(0), p, seq);
      for (int i = 0; i < seq; ++i) {
        T* row = p + static_cast<std::size_t>(i) * seq;
        T max = row[0];
        for (int j = 1; j <= i; ++j) max = std::max(max, row[j]);
        T sum = 0;
        for (int j = 0; j <= i; ++j) {
          row[j] = std::exp(row[j] - max);
          sum += row[j];
        }
        const T inv = T(1) / sum;
        for (int j = 0; j <= i; ++j) row[j] *= inv;
        for (int j = i + 1; j < seq; ++j) row[j] = T(0);  // masked: P · v then needs no mask
      }
      T* ctx = acts.ctx.data() + static_cast<std::size_t>(b) * seq * dim + h * hs;
      gemm<T>(false, false, seq, hs, seq, T(1), p, seq, v, c3, T(0), ctx, dim);
    }
  }
  linear_forward(out, acts.ctx.data(), wo, n, dim, dim);
}

template <typename T>
void attention_backward(T* dx, T* dwqkv, T* dwo, const T* dout, AttentionActs<T>& acts, const T* x,
                        const T* wqkv, const T* wo, int batch, int seq, int dim, int heads) {
  const int n = batch * seq, hs = dim / heads, c3 = 3 * dim;
  const std::size_t tt = static_cast<std::size_t>(seq) * seq;
  acts.dctx.assign(static_cast<std::size_t>(n) * dim, T(0));
  acts.dqkv.resize(static_cast<std::size_t>(n) * c3);  // every element is written below
  acts.datt.resize(tt);
  linear_backward(acts.dctx.data(), dwo, dout, acts.ctx.data(), wo, n, dim, dim);

  const T scale = T(1) / std::sqrt(T(hs));
  T* dp = acts.datt.data();
  for (int b = 0; b < batch; ++b) {
    for (int h = 0; h < heads; ++h) {
      const std::size_t head_offset = static_cast<std::size_t>(b) * seq * c3 + h * hs;
      const T* q = acts.qkv.data() + head_offset;
      const T* k = q + dim;
      const T* v = q + 2 * dim;
      T* dq = acts.dqkv.data() + head_offset;
      T* dk = dq + dim;
      T* dv = dq + 2 * dim;
      const T* p = acts.att.data() + (static_cast<std::size_t>(b) * heads + h) * tt;
      const T* dctx = acts.dctx.data() + static_cast<std::size_t>(b) * seq * dim + h * hs;
      // ctx = P v: dP = dctx vᵀ, dv = Pᵀ dctx.
      gemm<T>(false, true, seq, seq, hs, T(1), dctx, dim, v, c3, T(0), dp, seq);
      gemm<T>(true, false, seq, hs, seq, T(1), p, seq, dctx, dim, T(0), dv, c3);
      // softmax: dS_ij = P_ij (dP_ij - Σ_k P_ik dP_ik); times the scale of S = scale · q kᵀ.
      for (int i = 0; i < seq; ++i) {
        const T* prow = p + static_cast<std::size_t>(i) * seq;
        T* drow = dp + static_cast<std::size_t>(i) * seq;
        T dot = 0;
        for (int j = 0; j <= i; ++j) dot += prow[j] * drow[j];
        for (int j = 0; j <= i; ++j) drow[j] = prow[j] * (drow[j] - dot) * scale;
        for (int j = i + 1; j < seq; ++j) drow[j] = T(0);
      }
      // S = q kᵀ: dq = dS k, dk = dSᵀ q.
      gemm<T>(false, false, seq, hs, seq, T(1), dp, seq, k, c3, T(0), dq, c3);
      gemm<T>(true, false, seq, hs, seq, T(1), dp, seq, q, c3, T(0), dk, c3);
    }
  }
  linear_backward(dx, dwqkv, acts.dqkv.data(), x, wqkv, n, dim, c3);
}

template void attention_forward<float>(float*, AttentionActs<float>&, const float*, const float*,
                                       const float*, int, int, int, int);
template void attention_forward<double>(double*, AttentionActs<double>&, const double*, const double*,
                                        const double*, int, int, int, int);
template void attention_backward<float>(float*, float*, float*, const float*, AttentionActs<float>&,
                                        const float*, const float*, const float*, int, int, int, int);
template void attention_backward<double>(double*, double*, double*, const double*, AttentionActs<double>&,
                                         const double*, const double*, const double*, int, int, int, int);

}  // namespace ferry::model
