// Multi-token prediction module of depth 1 (DeepSeek-V3): at position i it combines the main model's last
// hidden state h_i with the embedding of the next token t_{i+1},
//   c_i = [RMSNorm_h(h_i) ; RMSNorm_e(wte[t_{i+1}])] · Wproj      (Wproj [2C, C]),
// runs one transformer block over c, and normalises the result; the model's shared head then predicts
// t_{i+2} (output_head.hpp). The embedding table and the head are the main model's (gradients flow into
// both).
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

  // A module over the same parameters with forward state of its own (Block::replica()).
  std::unique_ptr<MtpModule> replica(std::unique_ptr<ExpertExchange<T>> exchange) const;

  // h [B*T, C], kept unchanged by the caller until backward(); next_tokens [B*T]; wte [V, C]; out [B*T, C] =
  // features for the head. Returns the block's balance loss.
  T forward(T* out, const T* h, const int* next_tokens, const T* wte, int batch, ParamStore<T>& store);
  // Writes the last forward's `out` again (its final RMSNorm, recomputed bit for bit).
  void recompute_output(T* out, ParamStore<T>& store);
  // dh += ∂L/∂h, dwte += ∂L/∂wte (through the next-token embedding), own parameter gradients += theirs; h is
  // the forward's.
  void backward(T* dh, T* dwte, const T* dout, const T* h, ParamStore<T>& store);

  // On: the normalised inputs [RMSNorm_h(h) ; RMSNorm_e(e)] are dropped after forward and recomputed in
  // backward, and so are the block's norms.
  void set_recompute_norms(bool on);
  std::size_t activation_bytes() const;  // kept from the last forward (the caller's h and out not included)
  std::size_t recompute_bytes() const { return recompute_bytes_; }  // largest recomputed at once

  Block<T>& block() { return *block_; }
  const Block<T>& block() const { return *block_; }

 private:
  MtpModule(const MtpModule& other, std::unique_ptr<ExpertExchange<T>> exchange);
  // cat [n, 2C] = [RMSNorm_h(h) ; RMSNorm_e(emb_)] row by row; rewrites the kept rstds with the same values.
  void normalised_inputs(T* cat, const T* h, ParamStore<T>& store);

  int dim_, seq_;
  double eps_;
  bool recompute_ = false;
  ParamRef norm_h_, norm_e_, proj_, norm_f_;
  std::unique_ptr<Block<T>> block_;

  // forward state (cat_ empty between forward and backward when recomputing)
  int batch_ = 0;
  std::vector<int> next_tokens_;
  std::vector<T> emb_, h_rstd_, emb_rstd_, cat_, c0_, c1_, f_rstd_;
  // backward scratch
  std::vector<T> dc1_, dc0_, dcat_, demb_, recomputed_;
  std::size_t recompute_bytes_ = 0;
};

}  // namespace ferry::model
