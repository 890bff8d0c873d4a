#include "ferry/model/moe_layer.hpp"

#include <cstddef>
#include <string>

#include "ferry/core/error.hpp"
#include "ferry/model/activations.hpp"
#include "ferry/model/linear.hpp"

namespace ferry::model {

template <typename T>
MoELayer<T>::MoELayer(const MoEShape& shape, std::unique_ptr<ExpertExchange<T>> exchange)
    : shape_(shape), exchange_(std::move(exchange)), bias_(shape.router.experts, T(0)) {
  shape_.router.validate();
  if (!exchange_) fail(Errc::invalid_argument, "MoELayer needs an ExpertExchange");
  if (exchange_->num_experts() != shape_.router.experts)
    fail(Errc::invalid_argument, "MoELayer: the exchange serves " + std::to_string(exchange_->num_experts()) +
                                     " experts, the layer routes to " +
                                     std::to_string(shape_.router.experts));
  expert_acts_.resize(exchange_->num_local_experts());
}

template <typename T>
T MoELayer<T>::forward(T* y, const T* x, int batch, int seq, const MoEWeights<T>& w) {
  const int n = batch * seq, C = shape_.dim, H = shape_.hidden;
  const int E = shape_.router.experts, K = shape_.router.topk;
  const std::size_t slots = static_cast<std::size_t>(n) * K;
  batch_ = batch;
  seq_ = seq;

  logits_.resize(static_cast<std::size_t>(n) * E);
  scores_.resize(logits_.size());
  linear_forward(logits_.data(), x, w.gate, n, C, E);
  gate_scores(scores_.data(), logits_.data(), scores_.size());
  if (!frozen_ || selected_.size() != slots) {
    selected_.resize(slots);
    route_select(selected_.data(), scores_.data(), bias_.data(), n, shape_.router);
  }
  weights_.resize(slots);
  route_weights(weights_.data(), selected_.data(), scores_.data(), n, shape_.router);
  load_ = count_expert_load(selected_.data(), n, K, E);

  T balance = 0;
  if (shape_.balance_alpha > 0) {
    seq_freq_.resize(static_cast<std::size_t>(batch) * E);
    balance = balance_loss_forward(seq_freq_.data(), scores_.data(), selected_.data(), batch, seq, E, K,
                                   shape_.balance_alpha);
  }

  swiglu_forward(y, shared_acts_, x, w.shared_w13, w.shared_w2, n, C, H);

  handle_ = exchange_->dispatch(x, C, selected_.data(), weights_.data(), n, K, received_);
  const int rows = received_.rows();
  expert_out_.resize(static_cast<std::size_t>(rows) * C);
  weighted_out_.resize(expert_out_.size());
  const int first = exchange_->first_local_expert();
  const std::size_t w13_size = static_cast<std::size_t>(C) * 2 * H, w2_size = static_cast<std::size_t>(H) * C;
  for (int j = 0; j < exchange_->num_local_experts(); ++j) {
    const int r0 = received_.expert_offsets[j], r1 = received_.expert_offsets[j + 1];
    const std::size_t e = static_cast<std::size_t>(first + j);
    swiglu_forward(expert_out_.data() + static_cast<std::size_t>(r0) * C, expert_acts_[j],
                   received_.x.data() + static_cast<std::size_t>(r0) * C, w.experts_w13 + e * w13_size,
                   w.experts_w2 + e * w2_size, r1 - r0, C, H);
  }
  for (int r = 0; r < rows; ++r) {
    const T wr = received_.weight[r];
    const T* out = expert_out_.data() + static_cast<std::size_t>(r) * C;
    T* weighted = weighted_out_.data() + static_cast<std::size_t>(r) * C;
    for (int c = 0; c < C; ++c) weighted[c] = wr * out[c];
  }
  exchange_->combine(*handle_, weighted_out_.data(), y);
  return balance;
}

template <typename T>
void MoELayer<T>::backward(T* dx, const MoEGrads<T>& g, const T* dy, const T* x, const MoEWeights<T>& w) {
  if (!handle_) fail(Errc::internal, "MoELayer::backward() without a forward()");
  const int n = batch_ * seq_, C = shape_.dim, H = shape_.hidden;
  const int E = shape_.router.experts, K = shape_.router.topk;

  swiglu_backward(dx, g.shared_w13, g.shared_w2, dy, shared_acts_, x, w.shared_w13, w.shared_w2, n, C, H);

  // Expert side: y_row = w · out, so ∂L/∂w = dy_row · out and ∂L/∂out = w · dy_row.
  const int rows = received_.rows();
  drows_.resize(static_cast<std::size_t>(rows) * C);
  exchange_->combine_backward(*handle_, dy, drows_.data());
  dweight_rows_.resize(rows);
  for (int r = 0; r < rows; ++r) {
    T* d = drows_.data() + static_cast<std::size_t>(r) * C;
    const T* out = expert_out_.data() + static_cast<std::size_t>(r) * C;
    T dot = 0;
    for (int c = 0; c < C; ++c) dot += d[c] * out[c];
    dweight_rows_[r] = dot;
    const T wr = received_.weight[r];
    for (int c = 0; c < C; ++c) d[c] *= wr;
  }
  dx_rows_.assign(static_cast<std::size_t>(rows) * C, T(0));
  const int first = exchange_->first_local_expert();
  const std::size_t w13_size = static_cast<std::size_t>(C) * 2 * H, w2_size = static_cast<std::size_t>(H) * C;
  for (int j = 0; j < exchange_->num_local_experts(); ++j) {
    const int r0 = received_.expert_offsets[j], r1 = received_.expert_offsets[j + 1];
    const std::size_t e = static_cast<std::size_t>(first + j), off = static_cast<std::size_t>(r0) * C;
    swiglu_backward(dx_rows_.data() + off, g.experts_w13 + e * w13_size, g.experts_w2 + e * w2_size,
                    drows_.data() + off, expert_acts_[j], received_.x.data() + off,
                    w.experts_w13 + e * w13_size, w.experts_w2 + e * w2_size, r1 - r0, C, H);
  }
  dweights_.assign(static_cast<std::size_t>(n) * K, T(0));
  exchange_->dispatch_backward(*handle_, dx_rows_.data(), dweight_rows_.data(), dx, dweights_.data());

  // Gate: through the routing weights and the balance loss, then through the sigmoid and x · Wg.
  dscores_.assign(static_cast<std::size_t>(n) * E, T(0));
  route_weights_backward(dscores_.data(), dweights_.data(), selected_.data(), scores_.data(), n,
                         shape_.router);
  if (shape_.balance_alpha > 0)
    balance_loss_backward(dscores_.data(), T(1), seq_freq_.data(), scores_.data(), batch_, seq_, E,
                          shape_.balance_alpha);
  dlogits_.assign(dscores_.size(), T(0));
  gate_scores_backward(dlogits_.data(), dscores_.data(), scores_.data(), dscores_.size());
  linear_backward(dx, g.gate, dlogits_.data(), x, w.gate, n, C, E);
}

template <typename T>
std::size_t MoELayer<T>::activation_bytes() const {
  std::size_t bytes = bytes_held(scores_, weights_, seq_freq_, selected_, shared_acts_.h, shared_acts_.a,
                                 received_.expert_offsets, received_.x, received_.weight, expert_out_);
  for (const SwiGLUActs<T>& acts : expert_acts_) bytes += bytes_held(acts.h, acts.a);
  return bytes;
}

template <typename T>
double MoELayer<T>::selection_margin() const {
  const int n = static_cast<int>(scores_.size() / shape_.router.experts);
  return model::selection_margin(scores_.data(), bias_.data(), n, shape_.router);
}

template class MoELayer<float>;
template class MoELayer<double>;

}  // namespace ferry::model
