// The MoE transformer over bytes: embedding (+ learned positions) → blocks (dense FFN for the first n_dense,
// MoE after) → OutputHead: final RMSNorm → output head → cross-entropy on t_{i+1}; with config.mtp, the MTP
// module on the last hidden state predicts t_{i+2} through the same head. Total loss = main + λ · mtp + Σ
// balance losses. One Segment runs the whole pass.
//
// A batch is [B, seq + 2] byte tokens: inputs t_0..t_{T-1}, main targets t_1..t_T, MTP targets t_2..t_{T+1}.
// Model<float> trains; Model<double> exists for finite-difference gradient checks.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "ferry/model/block.hpp"
#include "ferry/model/config.hpp"
#include "ferry/model/expert_exchange.hpp"
#include "ferry/model/output_head.hpp"
#include "ferry/model/params.hpp"
#include "ferry/model/segment.hpp"

namespace ferry::model {

// Makes the exchange of MoE layer `moe_index` (0-based over moe_layers()); by default every layer gets a
// LocalExpertExchange. A distributed run passes one that goes through ferry.
template <typename T>
using ExchangeFactory = std::function<std::unique_ptr<ExpertExchange<T>>(int moe_index, int experts)>;

template <typename T>
class Model {
 public:
  explicit Model(const ModelConfig& config, ExchangeFactory<T> exchange_factory = {});

  // tokens [batch, seq + 2]. Returns the total loss and keeps what backward() needs.
  T forward(const std::uint8_t* tokens, int batch);
  // Gradients += ∂(total loss)/∂params of the last forward(). Call zero_grad() first for a fresh step.
  void backward();
  void zero_grad() { params_.zero_grads(); }

  const LossParts& losses() const { return losses_; }
  const ModelConfig& config() const { return config_; }
  ParamStore<T>& params() { return params_; }
  const ParamStore<T>& params() const { return params_; }

  // The pieces a pipeline stage is cut from (pipeline/stage.hpp).
  const Block<T>& block(int layer) const { return *blocks_.at(layer); }
  EmbeddingParams embedding() const { return {wte_, wpe_}; }
  const OutputHead<T>& head() const { return *head_; }

  // RMSNorm recomputation (DeepSeek-V3's memory saving): every norm's output is dropped after forward and
  // recomputed in backward, with bit-identical gradients. Replicas made afterwards inherit the setting.
  void set_recompute_norms(bool on);
  // Activation bytes of the last forward and backward (Segment::peak_activation_bytes()).
  std::size_t peak_activation_bytes() const { return segment_->peak_activation_bytes(); }

  // MoE layers in order: main blocks first, then the MTP block's.
  std::vector<MoELayer<T>*> moe_layers();
  std::vector<const MoELayer<T>*> moe_layers() const;
  // Tokens per expert of the last forward, per MoE layer.
  std::vector<ExpertLoad> expert_loads() const;
  // Auxiliary-loss-free balancing step of every MoE layer, from the last forward's loads.
  void update_balance_biases(double gamma);
  void set_routing_frozen(bool frozen);
  // Smallest selection margin over the MoE layers of the last forward (+inf without MoE).
  double selection_margin() const;

 private:
  ModelConfig config_;
  ParamStore<T> params_;
  ParamRef wte_, wpe_;
  std::vector<std::unique_ptr<Block<T>>> blocks_;
  std::unique_ptr<OutputHead<T>> head_;  // final norm, head, loss and the MTP module
  std::unique_ptr<Segment<T>> segment_;  // the pass through all of the above
  LossParts losses_;
};

}  // namespace ferry::model
