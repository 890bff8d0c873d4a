#include "ferry/model/optim.hpp"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <string>

#include "ferry/core/error.hpp"

namespace ferry::model {

double learning_rate(std::int64_t step, const TrainConfig& config) {
  if (step < config.warmup_steps) return config.lr * static_cast<double>(step + 1) / config.warmup_steps;
  const double min_lr = config.lr * config.min_lr_ratio;
  const double span = static_cast<double>(std::max<std::int64_t>(1, config.steps - config.warmup_steps));
  const double progress = std::min(1.0, static_cast<double>(step - config.warmup_steps) / span);
  return min_lr + 0.5 * (config.lr - min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
}

double clip_grad_norm(std::span<float> grads, double max_norm) {
  double sum_sq = 0;
  for (float g : grads) sum_sq += static_cast<double>(g) * g;
  const double norm = std::sqrt(sum_sq);
  if (max_norm > 0 && norm > max_norm) {
    const float scale = static_cast<float>(max_norm / norm);
    for (float& g : grads) g *= scale;
  }
  return norm;
}

void ema_update(std::span<float> ema, std::span<const float> params, double decay) {
  if (ema.size() != params.size())
    fail(Errc::invalid_argument, "ema_update: EMA has " + std::to_string(ema.size()) + " values, params " +
                                     std::to_string(params.size()));
  const float d = static_cast<float>(decay), one_minus = static_cast<float>(1.0 - decay);
  for (std::size_t i = 0; i < ema.size(); ++i) ema[i] = d * ema[i] + one_minus * params[i];
}

AdamW::AdamW(std::size_t size) : m_(size, 0.0f), v_(size, 0.0f) {}

void AdamW::step(std::span<float> params, std::span<const float> grads, const std::vector<ParamInfo>& info,
                 double lr, const TrainConfig& config) {
  if (params.size() != m_.size() || grads.size() != m_.size())
    fail(Errc::invalid_argument, "AdamW::step: sized for " + std::to_string(m_.size()) +
                                     " values, got params " + std::to_string(params.size()) + " and grads " +
                                     std::to_string(grads.size()));
  ++t_;
  const float b1 = static_cast<float>(config.beta1), b2 = static_cast<float>(config.beta2);
  const float bc1 = static_cast<float>(1.0 - std::pow(config.beta1, static_cast<double>(t_)));
  const float bc2 = static_cast<float>(1.0 - std::pow(config.beta2, static_cast<double>(t_)));
  const float eps = static_cast<float>(config.adam_eps), step_lr = static_cast<float>(lr);
  for (const ParamInfo& p : info) {
    const float wd = p.decay ? static_cast<float>(config.weight_decay) : 0.0f;
    for (std::size_t i = p.offset; i < p.offset + p.size; ++i) {
      const float g = grads[i];
      m_[i] = b1 * m_[i] + (1.0f - b1) * g;
      v_[i] = b2 * v_[i] + (1.0f - b2) * g * g;
      const float m_hat = m_[i] / bc1, v_hat = v_[i] / bc2;
      params[i] -= step_lr * (m_hat / (std::sqrt(v_hat) + eps) + wd * params[i]);
    }
  }
}

}  // namespace ferry::model
