#include "ferry/model/model.hpp"

#include <algorithm>
#include <limits>
#include <string>

#include "ferry/core/error.hpp"
#include "ferry/model/gemm.hpp"

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
  std::vector<Block<T>*> blocks;
  for (int l = 0; l < config_.layers; ++l) {
    const bool moe = l >= config_.n_dense;
    blocks_.push_back(
        std::make_unique<Block<T>>(config_, params_, "block" + std::to_string(l), moe, exchange_for(moe)));
    blocks.push_back(blocks_.back().get());
  }
  head_ = std::make_unique<OutputHead<T>>(config_, params_, wte_,
                                          exchange_for(config_.mtp && config_.mtp_block_is_moe()));
  segment_ =
      std::make_unique<Segment<T>>(config_, EmbeddingParams{wte_, wpe_}, std::move(blocks), head_.get());
  params_.allocate();
  params_.initialize(config_.init_seed);
}

template <typename T>
T Model<T>::forward(const std::uint8_t* tokens, int batch) {
  if (batch < 1)
    fail(Errc::invalid_argument, "Model::forward: batch must be >= 1, got " + std::to_string(batch));
  segment_->forward(params_, tokens, batch, nullptr);
  losses_ = segment_->losses();
  return static_cast<T>(losses_.total);
}

template <typename T>
void Model<T>::backward() {
  if (segment_->rows() == 0) fail(Errc::internal, "Model::backward() without a forward()");
  segment_->backward(params_, nullptr);
}

template <typename T>
void Model<T>::set_recompute_norms(bool on) {
  for (auto& block : blocks_) block->set_recompute_norms(on);
  head_->set_recompute_norms(on);
}

template <typename T>
std::vector<MoELayer<T>*> Model<T>::moe_layers() {
  std::vector<MoELayer<T>*> layers;
  for (auto& block : blocks_)
    if (block->is_moe()) layers.push_back(block->moe());
  if (head_->mtp() && head_->mtp()->block().is_moe()) layers.push_back(head_->mtp()->block().moe());
  return layers;
}

template <typename T>
std::vector<const MoELayer<T>*> Model<T>::moe_layers() const {
  std::vector<const MoELayer<T>*> layers;
  for (const auto& block : blocks_)
    if (block->is_moe()) layers.push_back(block->moe());
  if (head_->mtp() && head_->mtp()->block().is_moe()) layers.push_back(head_->mtp()->block().moe());
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
