// Optimisation pieces of the trainer: AdamW, the warm-up + cosine learning-rate schedule, global-norm
// gradient clipping and an exponential moving average (EMA) of the parameters.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "ferry/model/config.hpp"
#include "ferry/model/params.hpp"

namespace ferry::model {

// Learning rate of step `step` (0-based): linear warm-up lr · (step + 1) / warmup_steps over the first
// warmup_steps steps, then a cosine from lr down to lr · min_lr_ratio at step `steps`, flat after.
double learning_rate(std::int64_t step, const TrainConfig& config);

// Scales grads so that their global L2 norm is at most max_norm (max_norm 0 = no clipping). Returns the norm
// before clipping, accumulated in double.
double clip_grad_norm(std::span<float> grads, double max_norm);

// ema = decay · ema + (1 - decay) · params.
void ema_update(std::span<float> ema, std::span<const float> params, double decay);

// AdamW with bias correction and decoupled weight decay, applied only where ParamInfo::decay is set:
//   m = β1 m + (1-β1) g,  v = β2 v + (1-β2) g²,  p -= lr · (m̂ / (sqrt(v̂) + eps) + wd · p).
class AdamW {
 public:
  explicit AdamW(std::size_t size);

  void step(std::span<float> params, std::span<const float> grads, const std::vector<ParamInfo>& info,
            double lr, const TrainConfig& config);

  std::int64_t steps() const { return t_; }
  std::vector<float>& m() { return m_; }
  std::vector<float>& v() { return v_; }
  const std::vector<float>& m() const { return m_; }
  const std::vector<float>& v() const { return v_; }
  void set_steps(std::int64_t t) { t_ = t; }

 private:
  std::int64_t t_ = 0;
  std::vector<float> m_, v_;
};

}  // namespace ferry::model
