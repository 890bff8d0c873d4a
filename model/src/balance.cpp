#include "ferry/model/balance.hpp"

#include <algorithm>
#include <cstddef>
#include <string>

#include "ferry/core/error.hpp"

namespace ferry::model {

template <typename T>
T balance_loss_forward(T* f, const T* s, const int* idx, int batch, int seq, int experts, int topk,
                       double alpha) {
  std::vector<T> p(experts);
  T loss = 0;
  for (int b = 0; b < batch; ++b) {
    T* fb = f + static_cast<std::size_t>(b) * experts;
    std::fill(fb, fb + experts, T(0));
    std::fill(p.begin(), p.end(), T(0));
    for (int t = 0; t < seq; ++t) {
      const std::size_t n = static_cast<std::size_t>(b) * seq + t;
      const T* sn = s + n * experts;
      T sum = 0;
      for (int e = 0; e < experts; ++e) sum += sn[e];
      for (int e = 0; e < experts; ++e) p[e] += sn[e] / sum;
      for (int k = 0; k < topk; ++k) fb[idx[n * topk + k]] += T(1);
    }
    const T f_scale = T(experts) / (T(topk) * T(seq));
    for (int e = 0; e < experts; ++e) {
      fb[e] *= f_scale;
      loss += fb[e] * p[e] / T(seq);
    }
  }
  return T(alpha) * loss / T(batch);
}

template <typename T>
void balance_loss_backward(T* ds, T dloss, const T* f, const T* s, int batch, int seq, int experts,
                           double alpha) {
  // With g_e = dloss · α f_{b,e} / (B T) = ∂(dloss · L)/∂s'_{t,e} and s'_e = s_e / S:
  // ∂/∂s_j = (g_j - Σ_e g_e s'_e) / S.
  std::vector<T> g(experts);
  for (int b = 0; b < batch; ++b) {
    const T* fb = f + static_cast<std::size_t>(b) * experts;
    for (int e = 0; e < experts; ++e) g[e] = dloss * T(alpha) * fb[e] / (T(batch) * T(seq));
    for (int t = 0; t < seq; ++t) {
      const std::size_t n = static_cast<std::size_t>(b) * seq + t;
      const T* sn = s + n * experts;
      T* dsn = ds + n * experts;
      T sum = 0;
      for (int e = 0; e < experts; ++e) sum += sn[e];
      T dot = 0;
      for (int e = 0; e < experts; ++e) dot += g[e] * sn[e] / sum;
      for (int e = 0; e < experts; ++e) dsn[e] += (g[e] - dot) / sum;
    }
  }
}

double ExpertLoad::mean() const {
  if (counts.empty()) return 0;
  double total = 0;
  for (auto c : counts) total += static_cast<double>(c);
  return total / static_cast<double>(counts.size());
}

std::int64_t ExpertLoad::max() const {
  return counts.empty() ? 0 : *std::max_element(counts.begin(), counts.end());
}

double ExpertLoad::max_over_mean() const {
  const double m = mean();
  return m > 0 ? static_cast<double>(max()) / m : 0;
}

ExpertLoad count_expert_load(const int* idx, int n, int topk, int experts) {
  ExpertLoad load;
  load.counts.assign(experts, 0);
  for (std::size_t i = 0; i < static_cast<std::size_t>(n) * topk; ++i) {
    const int e = idx[i];
    if (e < 0 || e >= experts)
      fail(Errc::internal, "expert id " + std::to_string(e) + " of token " + std::to_string(i / topk) +
                               " is out of range [0, " + std::to_string(experts) + ")");
    ++load.counts[e];
  }
  return load;
}

template <typename T>
void update_balance_bias(T* bias, const ExpertLoad& load, double gamma) {
  const double mean = load.mean();
  for (std::size_t e = 0; e < load.counts.size(); ++e) {
    const double c = static_cast<double>(load.counts[e]);
    const double sign = c < mean ? 1.0 : (c > mean ? -1.0 : 0.0);
    bias[e] += static_cast<T>(gamma * sign);
  }
}

template float balance_loss_forward<float>(float*, const float*, const int*, int, int, int, int, double);
template double balance_loss_forward<double>(double*, const double*, const int*, int, int, int, int, double);
template void balance_loss_backward<float>(float*, float, const float*, const float*, int, int, int, double);
template void balance_loss_backward<double>(double*, double, const double*, const double*, int, int, int,
                                            double);
template void update_balance_bias<float>(float*, const ExpertLoad&, double);
template void update_balance_bias<double>(double*, const ExpertLoad&, double);

}  // namespace ferry::model
