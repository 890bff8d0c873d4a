// The MoE transformer over bytes: embedding (+ learned positions) → blocks (dense FFN for the first n_dense,
// MoE after) → final RMSNorm → output head → cross-entropy on t_{i+1}; with config.mtp, the MTP module on the
// last hidden state predicts t_{i+2} through the same head. Total loss = main + λ · mtp + Σ balance losses.
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
#include "ferry/model/mtp.hpp"
#include "ferry/model/params.hpp"

namespace ferry::model {

struct LossParts {
  double total = 0;    // main + mtp_lambda · mtp + balance: what backward() differentiates
  double main = 0;     // mean cross-entropy of t_{i+1}, nats
  double mtp = 0;      // mean cross-entropy of t_{i+2} (0 without MTP)
  double balance = 0;  // sum of the MoE layers' sequence-wise balance losses
};

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
  ParamRef token_embedding() const { return wte_; }
  ParamRef position_embedding() const { return wpe_; }
  ParamRef final_norm() const { return lnf_; }
  ParamRef output_head() const { return head_; }

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
  ParamRef wte_, wpe_, lnf_, head_;
  std::vector<std::unique_ptr<Block<T>>> blocks_;
  std::unique_ptr<MtpModule<T>> mtp_;
  LossParts losses_;

  // forward state
  int batch_ = 0;
  std::vector<int> inputs_, targets_, mtp_targets_;
  std::vector<std::vector<T>> xs_;  // block inputs/outputs: xs_[0] = embedding, xs_[L] = last hidden state
  std::vector<T> final_norm_, final_rstd_, logits_, probs_;
  std::vector<T> mtp_features_, mtp_logits_, mtp_probs_;
  // backward scratch
  std::vector<std::vector<T>> dxs_;
  std::vector<T> dlogits_, dfinal_;
};

}  // namespace ferry::model
