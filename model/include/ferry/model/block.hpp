// One transformer block: x → x + attn(RMSNorm(x)) → + FFN(RMSNorm(·)), the FFN dense SwiGLU or MoE.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ferry/model/attention.hpp"
#include "ferry/model/config.hpp"
#include "ferry/model/moe_layer.hpp"
#include "ferry/model/params.hpp"
#include "ferry/model/swiglu.hpp"

namespace ferry::model {

template <typename T>
class Block {
 public:
  // Registers the block's parameters in `store` (not yet allocated) as "<prefix>.<name>". An MoE block takes
  // the exchange its routed experts go through.
  Block(const ModelConfig& config, ParamStore<T>& store, const std::string& prefix, bool moe,
        std::unique_ptr<ExpertExchange<T>> exchange);

  // in, out [B*T, C]. Returns the MoE balance loss (0 for a dense block).
  T forward(T* out, const T* in, int batch, ParamStore<T>& store);
  // din += ∂L/∂in, parameter gradients += theirs, given dout = ∂L/∂out.
  void backward(T* din, const T* dout, ParamStore<T>& store);

  // A block over the same parameters with forward state of its own, its MoE layer (if any) going through
  // `exchange` and starting from this one's selection bias: a pipeline keeps one per micro-batch in flight.
  std::unique_ptr<Block> replica(std::unique_ptr<ExpertExchange<T>> exchange) const;

  bool is_moe() const { return moe_ != nullptr; }
  MoELayer<T>* moe() { return moe_.get(); }
  const MoELayer<T>* moe() const { return moe_.get(); }

 private:
  Block(const Block& other, std::unique_ptr<ExpertExchange<T>> exchange);
  MoEWeights<T> moe_weights(ParamStore<T>& store) const;
  MoEGrads<T> moe_grads(ParamStore<T>& store) const;

  int dim_, heads_, seq_, ffn_hidden_;
  double eps_;
  ParamRef ln1_, wqkv_, wo_, ln2_;
  ParamRef w13_, w2_;                                                  // dense FFN
  ParamRef gate_, shared_w13_, shared_w2_, experts_w13_, experts_w2_;  // MoE FFN
  std::unique_ptr<MoELayer<T>> moe_;

  // forward state
  int batch_ = 0;
  std::vector<T> in_, ln1_out_, ln1_rstd_, attn_out_, mid_, ln2_out_, ln2_rstd_;
  AttentionActs<T> attn_acts_;
  SwiGLUActs<T> ffn_acts_;
  // backward scratch
  std::vector<T> dmid_, dln1_, dln2_;
};

}  // namespace ferry::model
