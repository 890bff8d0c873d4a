#include "ferry/model/router.hpp"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <string>
#include <vector>

#include "ferry/core/error.hpp"

namespace ferry::model {

int RouterShape::group_topk() const {
  const int group_size = experts / groups;
  return std::clamp(topk / max_groups, 1, group_size);
}

void RouterShape::validate() const {
  if (experts < 1 || groups < 1 || experts % groups != 0)
    fail(Errc::invalid_argument,
         "router: groups=" + std::to_string(groups) + " must divide experts=" + std::to_string(experts));
  if (max_groups < 1 || max_groups > groups)
    fail(Errc::invalid_argument, "router: max_groups=" + std::to_string(max_groups) +
                                     " must be in [1, groups=" + std::to_string(groups) + "]");
  if (topk < 1 || topk > max_groups * (experts / groups))
    fail(Errc::invalid_argument, "router: topk=" + std::to_string(topk) +
                                     " exceeds the experts of max_groups=" + std::to_string(max_groups) +
                                     " groups");
}

template <typename T>
void gate_scores(T* s, const T* logits, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) s[i] = T(1) / (T(1) + std::exp(-logits[i]));
}

template <typename T>
void gate_scores_backward(T* dlogits, const T* ds, const T* s, std::size_t count) {
  for (std::size_t i = 0; i < count; ++i) dlogits[i] += ds[i] * s[i] * (T(1) - s[i]);
}

namespace {

// Per-token selection; keeps its buffers so a whole batch allocates once.
template <typename T>
class Selector {
 public:
  explicit Selector(const RouterShape& shape)
      : shape_(shape),
        group_size_(shape.experts / shape.groups),
        biased_(shape.experts),
        group_score_(shape.groups),
        group_order_(shape.groups),
        in_group_(group_size_),
        candidates_(shape.experts) {}

  // Selects for one token; afterwards group_order_[0..M) are the kept groups and candidates_[0..count) the
  // experts of kept groups, best first.
  void select(int token, const T* s, const T* bias, int* idx) {
    const int E = shape_.experts, G = shape_.groups, M = shape_.max_groups, K = shape_.topk;
    for (int e = 0; e < E; ++e) {
      biased_[e] = static_cast<double>(s[e]) + static_cast<double>(bias[e]);
      if (std::isnan(biased_[e]))
        fail(Errc::invalid_argument, "router: token " + std::to_string(token) +
                                         " has a NaN score for expert " + std::to_string(e) +
                                         " (diverged training?)");
    }
    const int kg = shape_.group_topk();
    for (int g = 0; g < G; ++g) {
      std::iota(in_group_.begin(), in_group_.end(), g * group_size_);
      std::partial_sort(in_group_.begin(), in_group_.begin() + kg, in_group_.end(), by_biased());
      double sum = 0;
      for (int j = 0; j < kg; ++j) sum += biased_[in_group_[j]];
      group_score_[g] = sum;
    }
    std::iota(group_order_.begin(), group_order_.end(), 0);
    std::sort(group_order_.begin(), group_order_.end(), [&](int a, int b) {
      return group_score_[a] > group_score_[b] || (group_score_[a] == group_score_[b] && a < b);
    });
    candidate_count_ = 0;
    for (int m = 0; m < M; ++m) {
      const int g = group_order_[m];
      for (int j = 0; j < group_size_; ++j) candidates_[candidate_count_++] = g * group_size_ + j;
    }
    std::sort(candidates_.begin(), candidates_.begin() + candidate_count_, by_biased());
    for (int k = 0; k < K; ++k) idx[k] = candidates_[k];
  }

  // Margin of the last select(): see selection_margin().
  double margin() const {
    const int M = shape_.max_groups, K = shape_.topk;
    double gap = std::numeric_limits<double>::infinity();
    if (M < shape_.groups) gap = group_score_[group_order_[M - 1]] - group_score_[group_order_[M]];
    if (K < candidate_count_) gap = std::min(gap, biased_[candidates_[K - 1]] - biased_[candidates_[K]]);
    return gap;
  }

 private:
  auto by_biased() const {
    return [this](int a, int b) { return biased_[a] > biased_[b] || (biased_[a] == biased_[b] && a < b); };
  }

  RouterShape shape_;
  int group_size_;
  std::vector<double> biased_;
  std::vector<double> group_score_;
  std::vector<int> group_order_;
  std::vector<int> in_group_;
  std::vector<int> candidates_;
  int candidate_count_ = 0;
};

}  // namespace

template <typename T>
void route_select(int* idx, const T* s, const T* bias, int n, const RouterShape& shape) {
  shape.validate();
  Selector<T> selector(shape);
  for (int i = 0; i < n; ++i) {
    selector.select(i, s + static_cast<std::size_t>(i) * shape.experts, bias,
                    idx + static_cast<std::size_t>(i) * shape.topk);
  }
}

template <typename T>
void route_weights(T* w, const int* idx, const T* s, int n, const RouterShape& shape) {
  const int E = shape.experts, K = shape.topk;
  for (int i = 0; i < n; ++i) {
    const T* si = s + static_cast<std::size_t>(i) * E;
    const int* ii = idx + static_cast<std::size_t>(i) * K;
    T sum = 0;
    for (int k = 0; k < K; ++k) sum += si[ii[k]];
    const T scale = T(shape.route_scale) / sum;
    for (int k = 0; k < K; ++k) w[static_cast<std::size_t>(i) * K + k] = si[ii[k]] * scale;
  }
}

template <typename T>
void route_weights_backward(T* ds, const T* dw, const int* idx, const T* s, int n, const RouterShape& shape) {
  // w_k = r s_k / S with S = Σ_j s_j: ∂L/∂s_j = (r / S) (dw_j - Σ_k dw_k s_k / S).
  const int E = shape.experts, K = shape.topk;
  for (int i = 0; i < n; ++i) {
    const T* si = s + static_cast<std::size_t>(i) * E;
    const int* ii = idx + static_cast<std::size_t>(i) * K;
    const T* dwi = dw + static_cast<std::size_t>(i) * K;
    T sum = 0, dot = 0;
    for (int k = 0; k < K; ++k) {
      sum += si[ii[k]];
      dot += dwi[k] * si[ii[k]];
    }
    const T r = T(shape.route_scale) / sum;
    for (int k = 0; k < K; ++k) ds[static_cast<std::size_t>(i) * E + ii[k]] += r * (dwi[k] - dot / sum);
  }
}

template <typename T>
double selection_margin(const T* s, const T* bias, int n, const RouterShape& shape) {
  Selector<T> selector(shape);
  std::vector<int> scratch(shape.topk);
  double margin = std::numeric_limits<double>::infinity();
  for (int i = 0; i < n; ++i) {
    selector.select(i, s + static_cast<std::size_t>(i) * shape.experts, bias, scratch.data());
    margin = std::min(margin, selector.margin());
  }
  return margin;
}

#define FERRY_ROUTER_INSTANTIATE(T)                                                                     \
  template void gate_scores<T>(T*, const T*, std::size_t);                                              \
  template void gate_scores_backward<T>(T*, const T*, const T*, std::size_t);                           \
  template void route_select<T>(int*, const T*, const T*, int, const RouterShape&);                     \
  template void route_weights<T>(T*, const int*, const T*, int, const RouterShape&);                    \
  template void route_weights_backward<T>(T*, const T*, const int*, const T*, int, const RouterShape&); \
  template double selection_margin<T>(const T*, const T*, int, const RouterShape&);
FERRY_ROUTER_INSTANTIATE(float)
FERRY_ROUTER_INSTANTIATE(double)
#undef FERRY_ROUTER_INSTANTIATE

}  // namespace ferry::model
