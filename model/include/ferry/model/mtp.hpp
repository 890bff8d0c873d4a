// Multi-token prediction module of depth 1 (DeepSeek-V3): at position i it combines the main model's last
// hidden state h_i with the embedding of the next token t_{i+1},
//   c_i = [RMSNorm_h(h_i) ; RMSNorm_e(wte[t_{i+1}])] · Wproj      (Wproj [2C, C]),
// runs one transformer block over c, and normalises the result; the model's shared head then predicts
// t_{i+2}. The embedding table and the head are the main model's (gradients flow into both).
#pragma once

#include <memory>
#include <vector>

#include "ferry/model/block.hpp"
#include "ferry/model/config.hpp"
#include "ferry/model/params.hpp"

namespace ferry::model {

template <typename T>
class MtpModule {
 public:
  // Registers "mtp.*" parameters in `store`; the block is MoE when config.mtp_block_is_moe().
  MtpModule(const ModelConfig& config, ParamStore<T>& store, std::unique_ptr<ExpertExchange<T>> exchange);

  // h [B*T, C]; next_tokens [B*T]; wte [V, C]; out [B*T, C] = features for the head. Returns the block's
  // balance loss.
  T forward(T* out, const T* h, const int* next_tokens, const T* wte, int batch, ParamStore<T>& store);
  // dh += ∂L/∂h, dwte += ∂L/∂wte (through the next-token embedding), own parameter gradients += theirs.
  void backward(T* dh, T* dwte, const T* dout, ParamStore<T>& store);

  Block<T>& block() { return block_; }
  const Block<T>& block() const { return block_; }

 private:
  int dim_, seq_;
  double eps_;
  ParamRef norm_h_, norm_e_, proj_, norm_f_;
  Block<T> block_;

  // forward state
  int batch_ = 0;
  std::vector<int> next_tokens_;
  std::vector<T> h_, emb_, h_norm_, h_rstd_, emb_norm_, emb_rstd_, cat_, c0_, c1_, f_rstd_;
  // backward scratch
  std::vector<T> dc1_, dc0_, dcat_, dpart_, demb_;
};

}  // namespace ferry::model
