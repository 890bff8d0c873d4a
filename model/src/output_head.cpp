#include "ferry/model/output_head.hpp"

#include <algorithm>
#include <cstddef>

#include "ferry/model/activations.hpp"
#include "ferry/model/cross_entropy.hpp"
#include "ferry/model/linear.hpp"
#include "ferry/model/rmsnorm.hpp"

namespace ferry::model {

template <typename T>
OutputHead<T>::OutputHead(const ModelConfig& config, ParamStore<T>& store, ParamRef wte,
                          std::unique_ptr<ExpertExchange<T>> mtp_exchange)
    : dim_(config.dim),
      vocab_(config.vocab),
      eps_(config.norm_eps),
      mtp_lambda_(config.mtp ? config.mtp_lambda : 0.0),
      wte_(wte),
      lnf_(store.add("lnf", {config.dim}, ParamInit::ones)),
      head_(store.add("head", {config.dim, config.vocab}, ParamInit::normal, config.init_std)) {
  if (config.mtp) mtp_ = std::make_unique<MtpModule<T>>(config, store, std::move(mtp_exchange));
}

template <typename T>
OutputHead<T>::OutputHead(const OutputHead& other, std::unique_ptr<ExpertExchange<T>> mtp_exchange)
    : dim_(other.dim_),
      vocab_(other.vocab_),
      eps_(other.eps_),
      mtp_lambda_(other.mtp_lambda_),
      recompute_(other.recompute_),
      wte_(other.wte_),
      lnf_(other.lnf_),
      head_(other.head_) {
  if (other.mtp_) mtp_ = other.mtp_->replica(std::move(mtp_exchange));
}

template <typename T>
std::unique_ptr<OutputHead<T>> OutputHead<T>::replica(std::unique_ptr<ExpertExchange<T>> mtp_exchange) const {
  return std::unique_ptr<OutputHead>(new OutputHead(*this, std::move(mtp_exchange)));
}

template <typename T>
void OutputHead<T>::set_recompute_norms(bool on) {
  recompute_ = on;
  if (mtp_) mtp_->set_recompute_norms(on);
}

template <typename T>
LossParts OutputHead<T>::forward(const T* h, const TokenRows& tokens, ParamStore<T>& store) {
  const int n = tokens.rows * tokens.seq, C = dim_, V = vocab_;
  const std::size_t size = static_cast<std::size_t>(n) * C, logits = static_cast<std::size_t>(n) * V;
  final_norm_.resize(size);
  final_rstd_.resize(n);
  logits_.resize(logits);
  probs_.resize(logits);
  rmsnorm_forward(final_norm_.data(), final_rstd_.data(), h, store.value(lnf_), n, C, eps_);
  linear_forward(logits_.data(), final_norm_.data(), store.value(head_), n, C, V);
  if (recompute_) release(final_norm_);
  LossParts losses;
  losses.main = cross_entropy_forward(probs_.data(), logits_.data(), tokens.targets.data(), n, V);
  if (!mtp_) return losses;

  features_.resize(size);
  mtp_probs_.resize(logits);
  // The MTP's "next token" inputs are the main model's targets t_{i+1}.
  losses.balance =
      mtp_->forward(features_.data(), h, tokens.targets.data(), store.value(wte_), tokens.rows, store);
  linear_forward(logits_.data(), features_.data(), store.value(head_), n, C, V);
  if (recompute_) release(features_);
  losses.mtp = cross_entropy_forward(mtp_probs_.data(), logits_.data(), tokens.mtp_targets.data(), n, V);
  return losses;
}

template <typename T>
void OutputHead<T>::backward(T* dh, const T* h, const TokenRows& tokens, ParamStore<T>& store) {
  const int n = tokens.rows * tokens.seq, C = dim_, V = vocab_;
  const std::size_t size = static_cast<std::size_t>(n) * C;
  recompute_bytes_ = 0;
  // The head's input of one path: kept, or recomputed into the one scratch buffer.
  const auto head_input = [&](std::vector<T>& kept, auto recompute) -> const T* {
    if (!recompute_) return kept.data();
    recomputed_.resize(size);
    recompute(recomputed_.data());
    recompute_bytes_ = std::max(recompute_bytes_, bytes_held(recomputed_));
    return recomputed_.data();
  };

  dlogits_.assign(static_cast<std::size_t>(n) * V, T(0));
  cross_entropy_backward(dlogits_.data(), probs_.data(), tokens.targets.data(), n, V, T(1));
  dfinal_.assign(size, T(0));
  const T* final_norm = head_input(
      final_norm_, [&](T* y) { rmsnorm_forward(y, final_rstd_.data(), h, store.value(lnf_), n, C, eps_); });
  linear_backward(dfinal_.data(), store.grad(head_), dlogits_.data(), final_norm, store.value(head_), n, C,
                  V);
  rmsnorm_backward(dh, store.grad(lnf_), dfinal_.data(), h, store.value(lnf_), final_rstd_.data(), n, C);
  if (mtp_) {
    std::fill(dlogits_.begin(), dlogits_.end(), T(0));
    cross_entropy_backward(dlogits_.data(), mtp_probs_.data(), tokens.mtp_targets.data(), n, V,
                           T(mtp_lambda_));
    std::fill(dfinal_.begin(), dfinal_.end(), T(0));
    const T* features = head_input(features_, [&](T* y) { mtp_->recompute_output(y, store); });
    linear_backward(dfinal_.data(), store.grad(head_), dlogits_.data(), features, store.value(head_), n, C,
                    V);
    release(recomputed_);
    mtp_->backward(dh, store.grad(wte_), dfinal_.data(), h, store);
    recompute_bytes_ = std::max(recompute_bytes_, mtp_->recompute_bytes());
  }
  release(recomputed_);
}

template <typename T>
std::size_t OutputHead<T>::activation_bytes() const {
  const std::size_t bytes = bytes_held(final_norm_, final_rstd_, probs_, features_, mtp_probs_);
  return mtp_ ? bytes + mtp_->activation_bytes() : bytes;
}

template class OutputHead<float>;
template class OutputHead<double>;

}  // namespace ferry::model
