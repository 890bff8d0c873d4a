#include "ferry/model/model.hpp"

#include <algorithm>
#include <cstddef>
#include <limits>
#include <string>

#include "ferry/core/error.hpp"
#include "ferry/model/cross_entropy.hpp"
#include "ferry/model/embedding.hpp"
#include "ferry/model/gemm.hpp"
#include "ferry/model/linear.hpp"
#include "ferry/model/rmsnorm.hpp"

namespace ferry::model {

template <typename T>
Model<T>::Model(const ModelConfig& config, ExchangeFactory<T> exchange_factory) : config_(config) {
  config_.validate();
  configure_blas_threads();
  if (!exchange_factory) {
    exchange_factory = [](int, int experts) { return std::make_unique<LocalExpertExchange<T>>(experts); };
  }
  const int C = config_.dim;
  wte_ = params_.add("wte", {config_.vocab, C}, ParamInit::normal, config_.init_std);
  wpe_ = params_.add("wpe", {config_.seq, C}, ParamInit::normal, config_.init_std);
  int moe_index = 0;
  auto exchange_for = [&](bool moe) -> std::unique_ptr<ExpertExchange<T>> {
    if (!moe) return nullptr;
    return exchange_factory(moe_index++, config_.experts);
  };
  for (int l = 0; l < config_.layers; ++l) {
    const bool moe = l >= config_.n_dense;
    blocks_.push_back(
        std::make_unique<Block<T>>(config_, params_, "block" + std::to_string(l), moe, exchange_for(moe)));
  }
  lnf_ = params_.add("lnf", {C}, ParamInit::ones);
  head_ = params_.add("head", {C, config_.vocab}, ParamInit::normal, config_.init_std);
  if (config_.mtp) {
    mtp_ = std::make_unique<MtpModule<T>>(config_, params_, exchange_for(config_.mtp_block_is_moe()));
  }
  params_.allocate();
  params_.initialize(config_.init_seed);
}

template <typename T>
T Model<T>::forward(const std::uint8_t* tokens, int batch) {
  if (batch < 1)
    fail(Errc::invalid_argument, "Model::forward: batch must be >= 1, got " + std::to_string(batch));
  batch_ = batch;
  const int S = config_.seq, C = config_.dim, V = config_.vocab, L = config_.layers;
  const int n = batch * S;
  const std::size_t size = static_cast<std::size_t>(n) * C;
  inputs_.resize(n);
  targets_.resize(n);
  mtp_targets_.resize(n);
  for (int b = 0; b < batch; ++b) {
    const std::uint8_t* row = tokens + static_cast<std::size_t>(b) * (S + 2);
    for (int j = 0; j < S + 2; ++j) {
      if (row[j] >= V)
        fail(Errc::invalid_argument, "token " + std::to_string(row[j]) + " at batch row " +
                                         std::to_string(b) + ", position " + std::to_string(j) +
                                         " is outside the vocabulary of " + std::to_string(V));
    }
    for (int t = 0; t < S; ++t) {
      inputs_[b * S + t] = row[t];
      targets_[b * S + t] = row[t + 1];
      mtp_targets_[b * S + t] = row[t + 2];
    }
  }

  xs_.resize(L + 1);
  for (auto& x : xs_) x.resize(size);
  embedding_forward(xs_[0].data(), inputs_.data(), params_.value(wte_), params_.value(wpe_), batch, S, C);
  T balance = 0;
  for (int l = 0; l < L; ++l)
    balance += blocks_[l]->forward(xs_[l + 1].data(), xs_[l].data(), batch, params_);

  final_norm_.resize(size);
  final_rstd_.resize(n);
  logits_.resize(static_cast<std::size_t>(n) * V);
  probs_.resize(logits_.size());
  rmsnorm_forward(final_norm_.data(), final_rstd_.data(), xs_[L].data(), params_.value(lnf_), n, C,
                  config_.norm_eps);
  linear_forward(logits_.data(), final_norm_.data(), params_.value(head_), n, C, V);
  const T main = cross_entropy_forward(probs_.data(), logits_.data(), targets_.data(), n, V);

  T mtp = 0;
  if (mtp_) {
    mtp_features_.resize(size);
    mtp_logits_.resize(logits_.size());
    mtp_probs_.resize(logits_.size());
    // The MTP's "next token" inputs are the main model's targets t_{i+1}.
    balance += mtp_->forward(mtp_features_.data(), xs_[L].data(), targets_.data(), params_.value(wte_), batch,
                             params_);
    linear_forward(mtp_logits_.data(), mtp_features_.data(), params_.value(head_), n, C, V);
    mtp = cross_entropy_forward(mtp_probs_.data(), mtp_logits_.data(), mtp_targets_.data(), n, V);
  }
  const T total = main + T(config_.mtp_lambda) * mtp + balance;
  losses_ = LossParts{static_cast<double>(total), static_cast<double>(main), static_cast<double>(mtp),
                      static_cast<double>(balance)};
  return total;
}

template <typename T>
void Model<T>::backward() {
  if (batch_ == 0) fail(Errc::internal, "Model::backward() without a forward()");
  const int S = config_.seq, C = config_.dim, V = config_.vocab, L = config_.layers;
  const int n = batch_ * S;
  const std::size_t size = static_cast<std::size_t>(n) * C;
  dxs_.resize(L + 1);
  for (auto& d : dxs_) d.assign(size, T(0));

  dlogits_.assign(static_cast<std::size_t>(n) * V, T(0));
  cross_entropy_backward(dlogits_.data(), probs_.data(), targets_.data(), n, V, T(1));
  dfinal_.assign(size, T(0));
  linear_backward(dfinal_.data(), params_.grad(head_), dlogits_.data(), final_norm_.data(),
                  params_.value(head_), n, C, V);
  rmsnorm_backward(dxs_[L].data(), params_.grad(lnf_), dfinal_.data(), xs_[L].data(), params_.value(lnf_),
                   final_rstd_.data(), n, C);
  if (mtp_) {
    std::fill(dlogits_.begin(), dlogits_.end(), T(0));
    cross_entropy_backward(dlogits_.data(), mtp_probs_.data(), mtp_targets_.data(), n, V,
                           T(config_.mtp_lambda));
    std::fill(dfinal_.begin(), dfinal_.end(), T(0));
    linear_backward(dfinal_.data(), params_.grad(head_), dlogits_.data(), mtp_features_.data(),
                    params_.value(head_), n, C, V);
    mtp_->backward(dxs_[L].data(), params_.grad(wte_), dfinal_.data(), params_);
  }
  for (int l = L - 1; l >= 0; --l) blocks_[l]->backward(dxs_[l].data(), dxs_[l + 1].data(), params_);
  embedding_backward(params_.grad(wte_), params_.grad(wpe_), dxs_[0].data(), inputs_.data(), batch_, S, C);
}

template <typename T>
std::vector<MoELayer<T>*> Model<T>::moe_layers() {
  std::vector<MoELayer<T>*> layers;
  for (auto& block : blocks_)
    if (block->is_moe()) layers.push_back(block->moe());
  if (mtp_ && mtp_->block().is_moe()) layers.push_back(mtp_->block().moe());
  return layers;
}

template <typename T>
std::vector<const MoELayer<T>*> Model<T>::moe_layers() const {
  std::vector<const MoELayer<T>*> layers;
  for (const auto& block : blocks_)
    if (block->is_moe()) layers.push_back(block->moe());
  if (mtp_ && mtp_->block().is_moe()) layers.push_back(mtp_->block().moe());
  return layers;
}

template <typename T>
std::vector<ExpertLoad> Model<T>::expert_loads() const {
  std::vector<ExpertLoad> loads;
  for (const MoELayer<T>* layer : moe_layers()) loads.push_back(layer->load());
  return loads;
}

template <typename T>
void Model<T>::update_balance_biases(double gamma) {
  for (MoELayer<T>* layer : moe_layers()) layer->update_bias(gamma);
}

template <typename T>
void Model<T>::set_routing_frozen(bool frozen) {
  for (MoELayer<T>* layer : moe_layers()) layer->set_routing_frozen(frozen);
}

template <typename T>
double Model<T>::selection_margin() const {
  double margin = std::numeric_limits<double>::infinity();
  for (const MoELayer<T>* layer : moe_layers()) margin = std::min(margin, layer->selection_margin());
  return margin;
}

template class Model<float>;
template class Model<double>;

}  // namespace ferry::model
