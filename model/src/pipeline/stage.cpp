#include "ferry/model/pipeline/stage.hpp"

#include <algorithm>
#include <optional>
#include <string>

#include "ferry/core/error.hpp"

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
    : range_(range) {
  const ModelConfig& config = model.config();
  std::vector<Block<float>*> blocks;
  for (int l = range.first_layer; l < range.end_layer; ++l) {
    const Block<float>& block = model.block(l);
    if (!block.is_moe()) {
      blocks_.push_back(block.replica(nullptr));
    } else {
      const int moe_index = l - config.n_dense;
      moe_index_.push_back(moe_index);
      blocks_.push_back(block.replica(exchange_for(moe_index, config.experts)));
    }
    blocks.push_back(blocks_.back().get());
  }
  if (range.has_head()) {
    std::unique_ptr<ExpertExchange<float>> mtp_exchange;
    if (config.mtp && config.mtp_block_is_moe()) {
      const int moe_index = config.layers - config.n_dense;  // after every main block's
      moe_index_.push_back(moe_index);
      mtp_exchange = exchange_for(moe_index, config.experts);
    }
    head_ = model.head().replica(std::move(mtp_exchange));
  }
  std::optional<EmbeddingParams> embedding;
  if (range.embeds()) embedding = model.embedding();
  segment_ = std::make_unique<Segment<float>>(config, embedding, std::move(blocks), head_.get());
}

const float* StageSlot::forward(Model<float>& model, const std::uint8_t* tokens, int rows, const float* in) {
  return segment_->forward(model.params(), tokens, rows, in);
}

const float* StageSlot::backward(Model<float>& model, const float* dout) {
  if (segment_->rows() == 0) fail(Errc::internal, "StageSlot::backward() without a forward()");
  return segment_->backward(model.params(), dout);
}

std::vector<MoELayer<float>*> StageSlot::moe_layers() {
  std::vector<MoELayer<float>*> layers;
  for (auto& block : blocks_)
    if (block->is_moe()) layers.push_back(block->moe());
  if (head_ && head_->mtp() && head_->mtp()->block().is_moe()) layers.push_back(head_->mtp()->block().moe());
  return layers;
}

std::vector<int> StageSlot::moe_indices() const {
  return moe_index_;
}

}  // namespace ferry::model::pipeline
