// The MoE feed-forward layer: y = shared(x) + Σ_k w_k · expert_{e_k}(x), with DeepSeek-V3 routing
// (router.hpp), load balancing (balance.hpp) and the token movement behind an ExpertExchange
// (expert_exchange.hpp).
//
// forward:  gate → route (select + weights) → balance loss → shared expert → dispatch → local experts,
//           each output row × its weight → combine.
// backward: shared expert → combine_backward → per row ∂L/∂w = dy·out, ∂L/∂out = w·dy → local experts'
//           backward → dispatch_backward → weights' gradient + balance-loss gradient → gate.
#pragma once

#include <memory>
#include <vector>

#include "ferry/model/balance.hpp"
#include "ferry/model/expert_exchange.hpp"
#include "ferry/model/router.hpp"
#include "ferry/model/swiglu.hpp"

namespace ferry::model {

struct MoEShape {
  int dim = 0;
  int hidden = 0;  // of the shared expert and of each routed expert
  RouterShape router;
  double balance_alpha = 0;
};

// Parameters, as pointers into a ParamStore. The expert tensors hold all E experts ([E, C, 2H] and [E, H,
// C]); the layer reads those of the exchange's local experts.
template <typename T>
struct MoEWeights {
  const T* gate = nullptr;         // [C, E]
  const T* shared_w13 = nullptr;   // [C, 2H]
  const T* shared_w2 = nullptr;    // [H, C]
  const T* experts_w13 = nullptr;  // [E, C, 2H]
  const T* experts_w2 = nullptr;   // [E, H, C]
};

template <typename T>
struct MoEGrads {
  T* gate = nullptr;
  T* shared_w13 = nullptr;
  T* shared_w2 = nullptr;
  T* experts_w13 = nullptr;
  T* experts_w2 = nullptr;
};

template <typename T>
class MoELayer {
 public:
  MoELayer(const MoEShape& shape, std::unique_ptr<ExpertExchange<T>> exchange);

  // x, y [B*T, C]. Returns this layer's balance loss (0 when balance_alpha is 0).
  T forward(T* y, const T* x, int batch, int seq, const MoEWeights<T>& w);
  // dx += ∂L/∂x; grads += ∂L/∂params, for L = (whatever produced dy) + this layer's balance loss. x holds the
  // forward's input values (the same buffer, or the same values recomputed).
  void backward(T* dx, const MoEGrads<T>& g, const T* dy, const T* x, const MoEWeights<T>& w);
  // Bytes kept from the last forward for backward (activations.hpp): routing, the shared expert's and the
  // local experts' activations, the received rows.
  std::size_t activation_bytes() const;

  // Selection bias per expert [E]: state, not a parameter (no gradient), moved by update_bias().
  std::vector<T>& bias() { return bias_; }
  const std::vector<T>& bias() const { return bias_; }
  // Tokens per expert of the last forward.
  const ExpertLoad& load() const { return load_; }
  // Auxiliary-loss-free balancing step from the last forward's load.
  void update_bias(double gamma) { update_balance_bias(bias_.data(), load_, gamma); }
  // While frozen, forward() reuses the last selection (weights still follow the scores): gradient checks
  // perturb parameters without flipping discrete choices.
  void set_routing_frozen(bool frozen) { frozen_ = frozen; }
  const std::vector<int>& routing() const { return selected_; }  // [B*T, K]
  const std::vector<T>& scores() const { return scores_; }       // [B*T, E]
  // selection_margin() of the last forward's scores (router.hpp).
  double selection_margin() const;
  const MoEShape& shape() const { return shape_; }
  ExpertExchange<T>& exchange() { return *exchange_; }

 private:
  MoEShape shape_;
  std::unique_ptr<ExpertExchange<T>> exchange_;
  std::vector<T> bias_;
  bool frozen_ = false;

  // forward state (logits_ and weighted_out_ are forward scratch)
  int batch_ = 0, seq_ = 0;
  std::vector<T> logits_, scores_, weights_, seq_freq_;
  std::vector<int> selected_;
  ExpertLoad load_;
  SwiGLUActs<T> shared_acts_;
  std::unique_ptr<ExchangeHandle> handle_;
  ExpertBatch<T> received_;
  std::vector<SwiGLUActs<T>> expert_acts_;
  std::vector<T> expert_out_, weighted_out_;
  // backward scratch
  std::vector<T> drows_, dx_rows_, dweight_rows_, dweights_, dscores_, dlogits_;
};

}  // namespace ferry::model
