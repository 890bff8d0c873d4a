// A pipeline stage: a contiguous run of the model's blocks, with the embedding in front on the first stage
// and the final norm, output head and cross-entropy behind on the last.
//
// A StageSlot is one micro-batch's pass through one stage. It holds replicas of the stage's blocks (same
// parameters, its own activations), so a rank can keep as many micro-batches in flight as its schedule needs.
// Forward and backward read and accumulate into the master model's ParamStore. Losses are per micro-batch
// means with gradient seed 1: the executor scales the summed gradients once, at the end of the step.
// Pipelined models have no MTP module (ModelConfig::mtp must be false).
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
  // model, as Model numbers them).
  StageSlot(const Model<float>& model, StageRange range, const ExchangeFactory<float>& exchange_for);

  const StageRange& range() const { return range_; }
  int rows() const { return rows_; }
  std::size_t activation_size() const;  // floats of one stage input/output: rows · seq · dim

  // tokens: the micro-batch [rows, seq + 2] (read by the first and the last stage); in: the previous stage's
  // output (ignored by the first). Returns this stage's output (valid until the next forward), or null on the
  // last stage, whose loss is then in losses().
  const float* forward(Model<float>& model, const std::uint8_t* tokens, int rows, const float* in);
  // dout: ∂L/∂(this stage's output), ignored by the last stage (it starts from its loss). Returns ∂L/∂input
  // (valid until the next backward), or null on the first stage.
  const float* backward(Model<float>& model, const float* dout);

  // main: the micro-batch's mean cross-entropy (last stage only); balance: this stage's MoE layers' losses.
  const LossParts& losses() const { return losses_; }
  std::vector<MoELayer<float>*> moe_layers();  // this stage's, in layer order
  std::vector<int> moe_indices() const;        // their indices over the whole model

 private:
  StageRange range_;
  int seq_, dim_, vocab_;
  double eps_;
  std::vector<std::unique_ptr<Block<float>>> blocks_;
  std::vector<int> moe_index_;
  LossParts losses_;

  int rows_ = 0;
  std::vector<int> inputs_, targets_;
  std::vector<std::vector<float>> xs_;  // xs_[0] = stage input, xs_[i + 1] = output of block i
  std::vector<float> final_norm_, final_rstd_, logits_, probs_;
  std::vector<std::vector<float>> dxs_;
  std::vector<float> dlogits_, dfinal_;
};

}  // namespace ferry::model::pipeline
