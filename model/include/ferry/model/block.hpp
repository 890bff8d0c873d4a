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

  // in, out [B*T, C]. Returns the MoE balance loss (0 for a dense block). The caller keeps `in` unchanged for
  // backward() (the block does not copy it).
  T forward(T* out, const T* in, int batch, ParamStore<T>& store);
  // din += ∂L/∂in, parameter gradients += theirs, given dout = ∂L/∂out and the forward's `in`.
  void backward(T* din, const T* dout, const T* in, ParamStore<T>& store);

  // A block over the same parameters with forward state of its own, its MoE layer (if any) going through
  // `exchange` and starting from this one's selection bias, and the same recompute setting: a pipeline keeps
  // one per micro-batch in flight.
  std::unique_ptr<Block> replica(std::unique_ptr<ExpertExchange<T>> exchange) const;

  // On: forward drops the outputs of both RMSNorms, backward recomputes them (bit-identical gradients).
  void set_recompute_norms(bool on) { recompute_ = on; }
  // Bytes kept from the last forward for backward (activations.hpp), and the largest recomputed output the
  // last backward held at once (0 without recompute).
  std::size_t activation_bytes() const;
  std::size_t recompute_bytes() const { return recompute_bytes_; }

  bool is_moe() const { return moe_ != nullptr; }
  MoELayer<T>* moe() { return moe_.get(); }
  const MoELayer<T>* moe() const { return moe_.get(); }

 private:
  Block(const Block& other, std::unique_ptr<ExpertExchange<T>> exchange);
  MoEWeights<T> moe_weights(ParamStore<T>& store) const;
  MoEGrads<T> moe_grads(ParamStore<T>& store) const;
  // The output of ln1 (of `in`) or ln2 (of mid_), into `out`; rewrites the kept rstd with the same values.
  void norm1(T* out, const T* in, int n, ParamStore<T>& store);
  void norm2(T* out, int n, ParamStore<T>& store);

  int dim_, heads_, seq_, ffn_hidden_;
  double eps_;
  bool recompute_ = false;
  ParamRef ln1_, wqkv_, wo_, ln2_;
  ParamRef w13_, w2_;                                                  // dense FFN
  ParamRef gate_, shared_w13_, shared_w2_, experts_w13_, experts_w2_;  // MoE FFN
  std::unique_ptr<MoELayer<T>> moe_;

  // forward state (ln1_out_ and ln2_out_ empty between forward and backward when recomputing)
  int batch_ = 0;
  std::vector<T> ln1_out_, ln1_rstd_, mid_, ln2_out_, ln2_rstd_;
  AttentionActs<T> attn_acts_;
  SwiGLUActs<T> ffn_acts_;
  // backward scratch
  std::vector<T> dmid_, dln1_, dln2_, recomputed_;
  std::size_t recompute_bytes_ = 0;
};

}  // namespace ferry::model
