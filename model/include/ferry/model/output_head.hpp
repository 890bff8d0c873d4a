// The loss end of the model: final RMSNorm → output head → cross-entropy on t_{i+1}, and with
// ModelConfig::mtp the MTP module on the same hidden state → the same head → cross-entropy on t_{i+2},
// weighted λ (mtp_lambda).
//
// The MTP reads the model's token embedding wte and shares the head: one copy of each parameter in the
// ParamStore, and the gradients of both paths accumulate into the one gradient of each. Model ends with one
// OutputHead; a pipeline's last stage holds a replica of it over the same parameters, on the pipeline rank
// that also holds the first layers and the embedding under DualPipe and DualPipeV.
#pragma once

#include <memory>
#include <vector>

#include "ferry/model/config.hpp"
#include "ferry/model/expert_exchange.hpp"
#include "ferry/model/mtp.hpp"
#include "ferry/model/params.hpp"
#include "ferry/model/tokens.hpp"

namespace ferry::model {

// Every loss is a mean over the rows' positions.
struct LossParts {
  double total = 0;    // main + mtp_lambda · mtp + balance: what backward() differentiates
  double main = 0;     // mean cross-entropy of t_{i+1}, nats
  double mtp = 0;      // mean cross-entropy of t_{i+2} (0 without MTP)
  double balance = 0;  // sum of the MoE layers' sequence-wise balance losses
};

template <typename T>
class OutputHead {
 public:
  // Registers "lnf", "head" and, with config.mtp, the MTP module's "mtp.*" in `store`, in that order. wte is
  // the model's token embedding (registered already); mtp_exchange serves the MTP block when it is MoE.
  OutputHead(const ModelConfig& config, ParamStore<T>& store, ParamRef wte,
             std::unique_ptr<ExpertExchange<T>> mtp_exchange);

  // A head over the same parameters with forward state of its own (Block::replica()).
  std::unique_ptr<OutputHead> replica(std::unique_ptr<ExpertExchange<T>> mtp_exchange) const;

  // h [rows · seq, C]: the last block's output, kept unchanged by the caller until backward(). Returns main,
  // mtp and balance (the MTP block's); total is left 0 (the caller adds the other layers' balance first).
  LossParts forward(const T* h, const TokenRows& tokens, ParamStore<T>& store);
  // dh += ∂(main + λ · mtp + MTP balance)/∂h; gradients of lnf, head, wte (through the MTP) and mtp.* +=
  // theirs. h and tokens are the forward's.
  void backward(T* dh, const T* h, const TokenRows& tokens, ParamStore<T>& store);

  MtpModule<T>* mtp() { return mtp_.get(); }
  const MtpModule<T>* mtp() const { return mtp_.get(); }
  double mtp_lambda() const { return mtp_lambda_; }

  // On: the final norm's output and the MTP's features are recomputed in backward (and the MTP's own norms).
  void set_recompute_norms(bool on);
  std::size_t activation_bytes() const;  // kept from the last forward (the caller's h not included)
  std::size_t recompute_bytes() const { return recompute_bytes_; }  // largest recomputed at once

 private:
  OutputHead(const OutputHead& other, std::unique_ptr<ExpertExchange<T>> mtp_exchange);

  int dim_, vocab_;
  double eps_, mtp_lambda_;
  bool recompute_ = false;
  ParamRef wte_, lnf_, head_;
  std::unique_ptr<MtpModule<T>> mtp_;

  // forward state (final_norm_ and features_ empty between forward and backward when recomputing; logits_
  // is forward scratch)
  std::vector<T> final_norm_, final_rstd_, logits_, probs_, features_, mtp_probs_;
  // backward scratch
  std::vector<T> dlogits_, dfinal_, recomputed_;
  std::size_t recompute_bytes_ = 0;
};

}  // namespace ferry::model
