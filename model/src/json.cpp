#include "ferry/model/json.hpp"

#include <set>
#include <string>

#include "ferry/core/error.hpp"

namespace ferry::model {

namespace {

// One list of fields per struct, shared by reading and writing.
template <class C, class F>
void model_fields(C& c, F&& f) {
  f("vocab", c.vocab);
  f("seq", c.seq);
  f("layers", c.layers);
  f("n_dense", c.n_dense);
  f("dim", c.dim);
  f("heads", c.heads);
  f("ffn_hidden", c.ffn_hidden);
  f("experts", c.experts);
  f("topk", c.topk);
  f("groups", c.groups);
  f("max_groups", c.max_groups);
  f("expert_hidden", c.expert_hidden);
  f("route_scale", c.route_scale);
  f("balance_alpha", c.balance_alpha);
  f("mtp", c.mtp);
  f("mtp_lambda", c.mtp_lambda);
  f("norm_eps", c.norm_eps);
  f("init_std", c.init_std);
  f("init_seed", c.init_seed);
}

template <class C, class F>
void train_fields(C& c, F&& f) {
  f("batch", c.batch);
  f("steps", c.steps);
  f("lr", c.lr);
  f("min_lr_ratio", c.min_lr_ratio);
  f("warmup_steps", c.warmup_steps);
  f("weight_decay", c.weight_decay);
  f("beta1", c.beta1);
  f("beta2", c.beta2);
  f("adam_eps", c.adam_eps);
  f("grad_clip", c.grad_clip);
  f("ema_decay", c.ema_decay);
  f("bias_update_rate", c.bias_update_rate);
  f("data_seed", c.data_seed);
  f("recompute_norms", c.recompute_norms);
}

template <class C, class F>
void data_fields(C& c, F&& f) {
  f("path", c.path);
  f("synthetic_seed", c.synthetic_seed);
  f("synthetic_bytes", c.synthetic_bytes);
}

template <class C, class F>
void job_fields(C& c, F&& f) {
  f("run_id", c.run_id);
  f("world_size", c.world_size);
  f("rank", c.rank);
  f("pipeline_ranks", c.pipeline_ranks);
}

template <class C, class Fields>
void write(nlohmann::json& j, const C& c, Fields fields) {
  j = nlohmann::json::object();
  fields(c, [&](const char* key, const auto& value) { j[key] = value; });
}

template <class C, class Fields>
void read(const nlohmann::json& j, C& c, Fields fields, const char* what) {
  if (!j.is_object()) fail(Errc::invalid_argument, std::string(what) + ": expected a JSON object");
  std::set<std::string> known;
  fields(c, [&](const char* key, auto&) { known.insert(key); });
  for (const auto& item : j.items())
    if (!known.count(item.key()))
      fail(Errc::invalid_argument, std::string(what) + ": unknown key '" + item.key() + "'");
  fields(c, [&](const char* key, auto& value) {
    if (!j.contains(key)) return;
    try {
      j.at(key).get_to(value);
    } catch (const nlohmann::json::exception& e) {
      fail(Errc::invalid_argument, std::string(what) + "." + key + ": " + e.what());
    }
  });
}

}  // namespace

void to_json(nlohmann::json& j, const ModelConfig& c) {
  write(j, c, [](auto& c, auto&& f) { model_fields(c, f); });
}
void from_json(const nlohmann::json& j, ModelConfig& c) {
  read(
      j, c, [](auto& c, auto&& f) { model_fields(c, f); }, "ModelConfig");
}
void to_json(nlohmann::json& j, const TrainConfig& c) {
  write(j, c, [](auto& c, auto&& f) { train_fields(c, f); });
}
void from_json(const nlohmann::json& j, TrainConfig& c) {
  read(
      j, c, [](auto& c, auto&& f) { train_fields(c, f); }, "TrainConfig");
}
void to_json(nlohmann::json& j, const DataConfig& c) {
  write(j, c, [](auto& c, auto&& f) { data_fields(c, f); });
}
void from_json(const nlohmann::json& j, DataConfig& c) {
  read(
      j, c, [](auto& c, auto&& f) { data_fields(c, f); }, "DataConfig");
}

void to_json(nlohmann::json& j, const JobFingerprint& f) {
  write(j, f, [](auto& c, auto&& f) { job_fields(c, f); });
}
void from_json(const nlohmann::json& j, JobFingerprint& f) {
  read(
      j, f, [](auto& c, auto&& f) { job_fields(c, f); }, "JobFingerprint");
}

void to_json(nlohmann::json& j, const StepStats& s) {
  j = nlohmann::json{{"step", s.step},
                     {"lr", s.lr},
                     {"loss", s.loss},
                     {"main_loss", s.main_loss},
                     {"mtp_loss", s.mtp_loss},
                     {"balance_loss", s.balance_loss},
                     {"grad_norm", s.grad_norm},
                     {"tokens", s.tokens},
                     {"load_max_over_mean", s.load_max_over_mean},
                     {"expert_load", s.expert_load},
                     {"activation_peak_bytes", s.activation_peak_bytes},
                     {"seconds", s.seconds},
                     {"tokens_per_s", s.tokens_per_s}};
}

std::string config_difference(const ModelConfig& a, const ModelConfig& b) {
  const nlohmann::json ja = a, jb = b;
  for (const auto& item : ja.items()) {
    const auto& other = jb.at(item.key());
    if (item.value() != other) return item.key() + ": " + item.value().dump() + " vs " + other.dump();
  }
  return "";
}

}  // namespace ferry::model
