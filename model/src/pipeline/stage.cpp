#include "ferry/model/pipeline/stage.hpp"

#include <algorithm>
#include <string>

#include "ferry/core/error.hpp"
#include "ferry/model/cross_entropy.hpp"
#include "ferry/model/embedding.hpp"
#include "ferry/model/linear.hpp"
#include "ferry/model/rmsnorm.hpp"

namespace ferry::model::pipeline {

StageRange stage_range(const ModelConfig& config, int stage, int stages) {
  if (stages < 1 || stage < 0 || stage >= stages)
    fail(Errc::invalid_argument,
         "stage " + std::to_string(stage) + " of " + std::to_string(stages) + " does not exist");
  if (config.layers < stages)
    fail(Errc::invalid_argument, "a pipeline of " + std::to_string(stages) + " stages needs at least " +
                                     std::to_string(stages) + " layers, the model has " +
                                     std::to_string(config.layers));
  const int base = config.layers / stages, extra = config.layers % stages;
  StageRange range;
  range.stage = stage;
  range.stages = stages;
  range.first_layer = stage * base + std::min(stage, extra);
  range.end_layer = range.first_layer + base + (stage < extra ? 1 : 0);
  return range;
}

StageSlot::StageSlot(const Model<float>& model, StageRange range, const ExchangeFactory<float>& exchange_for)
    : range_(range),
      seq_(model.config().seq),
      dim_(model.config().dim),
      vocab_(model.config().vocab),
      eps_(model.config().norm_eps) {
  const ModelConfig& config = model.config();
  if (config.mtp)
    fail(Errc::invalid_argument, "pipeline schedules run models without the MTP module (turn mtp off)");
  for (int l = range.first_layer; l < range.end_layer; ++l) {
    const Block<float>& block = model.block(l);
    if (!block.is_moe()) {
      blocks_.push_back(block.replica(nullptr));
      continue;
    }
    const int moe_index = l - config.n_dense;
    moe_index_.push_back(moe_index);
    blocks_.push_back(block.replica(exchange_for(moe_index, config.experts)));
  }
}

std::size_t StageSlot::activation_size() const {
  return static_cast<std::size_t>(rows_) * seq_ * dim_;
}

const float* StageSlot::forward(Model<float>& model, const std::uint8_t* tokens, int rows, const float* in) {
  if (rows < 1) fail(Errc::invalid_argument, "a micro-batch needs at least one row");
  rows_ = rows;
  const int S = seq_, C = dim_, V = vocab_, n = rows * S;
  const std::size_t size = activation_size();
  auto& params = model.params();
  const int blocks = static_cast<int>(blocks_.size());
  xs_.resize(blocks + 1);
  for (auto& x : xs_) x.resize(size);

  if (range_.embeds() || range_.has_head()) {
    inputs_.resize(n);
    targets_.resize(n);
    for (int b = 0; b < rows; ++b) {
      const std::uint8_t* row = tokens + static_cast<std::size_t>(b) * (S + 2);
      for (int t = 0; t < S; ++t) {
        if (row[t + 1] >= V || row[t] >= V)
          fail(Errc::invalid_argument, "micro-batch row " + std::to_string(b) + " has a token outside the " +
                                           std::to_string(V) + "-token vocabulary");
        inputs_[b * S + t] = row[t];
        targets_[b * S + t] = row[t + 1];
      }
    }
  }
  if (range_.embeds()) {
    embedding_forward(xs_[0].data(), inputs_.data(), params.value(model.token_embedding()),
                      params.value(model.position_embedding()), rows, S, C);
  } else {
    std::copy_n(in, size, xs_[0].data());
  }
  losses_ = LossParts{};
  double balance = 0;
  for (int i = 0; i < blocks; ++i)
    balance += blocks_[i]->forward(xs_[i + 1].data(), xs_[i].data(), rows, params);
  losses_.balance = balance;
  if (!range_.has_head()) return xs_[blocks].data();

  final_norm_.resize(size);
  final_rstd_.resize(n);
  logits_.resize(static_cast<std::size_t>(n) * V);
  probs_.resize(logits_.size());
  rmsnorm_forward(final_norm_.data(), final_rstd_.data(), xs_[blocks].data(),
                  params.value(model.final_norm()), n, C, eps_);
  linear_forward(logits_.data(), final_norm_.data(), params.value(model.output_head()), n, C, V);
  losses_.main = cross_entropy_forward(probs_.data(), logits_.data(), targets_.data(), n, V);
  losses_.total = losses_.main + losses_.balance;
  return nullptr;
}

const float* StageSlot::backward(Model<float>& model, const float* dout) {
  if (rows_ == 0) fail(Errc::internal, "StageSlot::backward() without a forward()");
  const int S = seq_, C = dim_, V = vocab_, n = rows_ * S;
  const std::size_t size = activation_size();
  auto& params = model.params();
  const int blocks = static_cast<int>(blocks_.size());
  dxs_.resize(blocks + 1);
  for (auto& d : dxs_) d.assign(size, 0.0f);

  if (range_.has_head()) {
    dlogits_.assign(static_cast<std::size_t>(n) * V, 0.0f);
    cross_entropy_backward(dlogits_.data(), probs_.data(), targets_.data(), n, V, 1.0f);
    dfinal_.assign(size, 0.0f);
    linear_backward(dfinal_.data(), params.grad(model.output_head()), dlogits_.data(), final_norm_.data(),
                    params.value(model.output_head()), n, C, V);
    rmsnorm_backward(dxs_[blocks].data(), params.grad(model.final_norm()), dfinal_.data(), xs_[blocks].data(),
                     params.value(model.final_norm()), final_rstd_.data(), n, C);
  } else {
    std::copy_n(dout, size, dxs_[blocks].data());
  }
  for (int i = blocks - 1; i >= 0; --i) blocks_[i]->backward(dxs_[i].data(), dxs_[i + 1].data(), params);
  if (!range_.embeds()) return dxs_[0].data();
  embedding_backward(params.grad(model.token_embedding()), params.grad(model.position_embedding()),
                     dxs_[0].data(), inputs_.data(), rows_, S, C);
  return nullptr;
}

std::vector<MoELayer<float>*> StageSlot::moe_layers() {
  std::vector<MoELayer<float>*> layers;
  for (auto& block : blocks_)
    if (block->is_moe()) layers.push_back(block->moe());
  return layers;
}

std::vector<int> StageSlot::moe_indices() const {
  return moe_index_;
}

}  // namespace ferry::model::pipeline
