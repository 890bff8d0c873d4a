#include "ferry/model/config.hpp"

#include <string>

#include "ferry/core/error.hpp"

namespace ferry::model {

namespace {

void require(bool ok, const char* what, const std::string& why) {
  if (!ok) fail(Errc::invalid_argument, std::string(what) + ": " + why);
}

}  // namespace

void ModelConfig::validate() const {
  require(vocab >= 2 && vocab <= 256, "ModelConfig.vocab",
          "must be in [2, 256] (byte tokens), got " + std::to_string(vocab));
  require(seq >= 1, "ModelConfig.seq", "must be >= 1, got " + std::to_string(seq));
  require(layers >= 1, "ModelConfig.layers", "must be >= 1, got " + std::to_string(layers));
  require(n_dense >= 0 && n_dense <= layers, "ModelConfig.n_dense",
          "must be in [0, layers=" + std::to_string(layers) + "], got " + std::to_string(n_dense));
  require(dim >= 1, "ModelConfig.dim", "must be >= 1, got " + std::to_string(dim));
  require(heads >= 1 && dim % heads == 0, "ModelConfig.heads",
          "must divide dim=" + std::to_string(dim) + ", got " + std::to_string(heads));
  require(ffn_hidden >= 1, "ModelConfig.ffn_hidden", "must be >= 1, got " + std::to_string(ffn_hidden));
  require(norm_eps > 0, "ModelConfig.norm_eps", "must be > 0");
  require(init_std > 0, "ModelConfig.init_std", "must be > 0");
  require(!mtp || mtp_lambda >= 0, "ModelConfig.mtp_lambda", "must be >= 0");
  if (layers > n_dense) {
    require(experts >= 1, "ModelConfig.experts", "must be >= 1, got " + std::to_string(experts));
    require(groups >= 1 && experts % groups == 0, "ModelConfig.groups",
            "must divide experts=" + std::to_string(experts) + ", got " + std::to_string(groups));
    require(max_groups >= 1 && max_groups <= groups, "ModelConfig.max_groups",
            "must be in [1, groups=" + std::to_string(groups) + "], got " + std::to_string(max_groups));
    require(topk >= 1 && topk <= max_groups * (experts / groups), "ModelConfig.topk",
            "must be in [1, max_groups * experts / groups = " +
                std::to_string(max_groups * (experts / groups)) + "], got " + std::to_string(topk));
    require(expert_hidden >= 1, "ModelConfig.expert_hidden",
            "must be >= 1, got " + std::to_string(expert_hidden));
    require(route_scale > 0, "ModelConfig.route_scale", "must be > 0");
    require(balance_alpha >= 0, "ModelConfig.balance_alpha", "must be >= 0");
  }
}

void TrainConfig::validate() const {
  require(batch >= 1, "TrainConfig.batch", "must be >= 1, got " + std::to_string(batch));
  require(steps >= 1, "TrainConfig.steps", "must be >= 1, got " + std::to_string(steps));
  require(lr > 0, "TrainConfig.lr", "must be > 0");
  require(min_lr_ratio >= 0 && min_lr_ratio <= 1, "TrainConfig.min_lr_ratio", "must be in [0, 1]");
  require(warmup_steps >= 0, "TrainConfig.warmup_steps", "must be >= 0");
  require(weight_decay >= 0, "TrainConfig.weight_decay", "must be >= 0");
  require(beta1 >= 0 && beta1 < 1, "TrainConfig.beta1", "must be in [0, 1)");
  require(beta2 >= 0 && beta2 < 1, "TrainConfig.beta2", "must be in [0, 1)");
  require(adam_eps > 0, "TrainConfig.adam_eps", "must be > 0");
  require(grad_clip >= 0, "TrainConfig.grad_clip", "must be >= 0 (0 = off)");
  require(ema_decay >= 0 && ema_decay <= 1, "TrainConfig.ema_decay", "must be in [0, 1]");
  require(bias_update_rate >= 0, "TrainConfig.bias_update_rate", "must be >= 0 (0 = off)");
}

void DataConfig::validate() const {
  require(!path.empty() || synthetic_bytes >= 1024, "DataConfig.synthetic_bytes",
          "must be >= 1024 when no data file is given");
  require(max_file_bytes >= 1, "DataConfig.max_file_bytes", "must be >= 1");
}

}  // namespace ferry::model
