// A pipeline stage: a contiguous run of the model's blocks, with the embedding in front on the first stage
// and the OutputHead behind on the last (final norm, output head, cross-entropy and, with ModelConfig::mtp,
// the MTP module, which reads the embedding table and shares the head).
//
// A StageSlot is one micro-batch's pass through one stage: a Segment (segment.hpp) over replicas of the
// stage's blocks and head (same parameters, its own activations), so a rank can keep as many micro-batches
// in flight as its schedule needs. Forward and backward read and accumulate into the master model's
// ParamStore, so on a rank that holds both the first and the last stage (DualPipe, DualPipeV) the embedding's
// and the MTP's gradients of wte land in the one gradient array. Losses are per micro-batch means with
// gradient seed 1: the executor scales the summed gradients once, at the end of the step.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "ferry/model/model.hpp"

namespace ferry::model::pipeline {

struct StageRange {
  int stage = 0, stages = 1;
  int first_layer = 0, end_layer = 0;  // blocks [first_layer, end_layer)
  bool embeds() const { return stage == 0; }
  bool has_head() const { return stage == stages - 1; }
};

// Blocks split as evenly as possible, earlier stages taking the remainder; throws invalid_argument when a
// stage would have no block.
StageRange stage_range(const ModelConfig& config, int stage, int stages);

class StageSlot {
 public:
  // exchange_for(moe_index, experts) makes the exchange of MoE layer `moe_index` (counted over the whole
  // model, as Model numbers them: the MTP block's last). Blocks and head inherit the model's recompute
  // setting.
  StageSlot(const Model<float>& model, StageRange range, const ExchangeFactory<float>& exchange_for);

  const StageRange& range() const { return range_; }
  int rows() const { return segment_->rows(); }
  std::size_t activation_size() const { return segment_->activation_size(); }  // rows · seq · dim

  // tokens: the micro-batch [rows, seq + 2] (read by the first and the last stage); in: the previous stage's
  // output (ignored by the first). Returns this stage's output (valid until the next forward), or null on the
  // last stage, whose loss is then in losses().
  const float* forward(Model<float>& model, const std::uint8_t* tokens, int rows, const float* in);
  // dout: ∂L/∂(this stage's output), ignored by the last stage (it starts from its loss). Returns ∂L/∂input
  // (valid until the next backward), or null on the first stage.
  const float* backward(Model<float>& model, const float* dout);

  // main and mtp: the micro-batch's mean cross-entropies (last stage only); balance: this stage's MoE
  // layers' losses.
  const LossParts& losses() const { return segment_->losses(); }
  std::vector<MoELayer<float>*> moe_layers();  // this stage's, in the model's order
  std::vector<int> moe_indices() const;        // their indices over the whole model
  // Activation bytes of this micro-batch's last pass through the stage (Segment::peak_activation_bytes()).
  std::size_t peak_activation_bytes() const { return segment_->peak_activation_bytes(); }

 private:
  StageRange range_;
  std::vector<std::unique_ptr<Block<float>>> blocks_;
  std::unique_ptr<OutputHead<float>> head_;
  std::vector<int> moe_index_;
  std::unique_ptr<Segment<float>> segment_;
};

}  // namespace ferry::model::pipeline
