// JSON forms of the configurations and step statistics (nlohmann::json, found by ADL), for `ferry train` and
// for the configs stored in checkpoints. from_json keeps defaults for missing keys and rejects unknown ones,
// naming the key.
#pragma once

#include <nlohmann/json.hpp>

#include "ferry/model/checkpoint.hpp"
#include "ferry/model/config.hpp"
#include "ferry/model/trainer.hpp"

namespace ferry::model {

void to_json(nlohmann::json& j, const ModelConfig& c);
void from_json(const nlohmann::json& j, ModelConfig& c);
void to_json(nlohmann::json& j, const TrainConfig& c);
void from_json(const nlohmann::json& j, TrainConfig& c);
void to_json(nlohmann::json& j, const DataConfig& c);
void from_json(const nlohmann::json& j, DataConfig& c);
void to_json(nlohmann::json& j, const StepStats& s);
void to_json(nlohmann::json& j, const JobFingerprint& f);
void from_json(const nlohmann::json& j, JobFingerprint& f);

// "" when equal, else "<field>: <a> vs <b>" for the first field that differs.
std::string config_difference(const ModelConfig& a, const ModelConfig& b);

}  // namespace ferry::model
