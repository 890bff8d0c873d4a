// What the pipelined trainer's multi-process tests share: run `ferry train` under `ferry launch` with a JSON
// log and per-rank checkpoints, and compare a pipelined run with plain expert parallelism over the same ranks
// (steps within 1e-6, final parameters and first moments within 1e-6 relative L2).
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "../peer/launch_run.hpp"
#include "ferry/model/checkpoint.hpp"
#include "ferry/model/distributed.hpp"
#include "ferry/model/model.hpp"
#include "train_compare.hpp"

namespace ferry::test {

struct PipelineRun {
  nlohmann::json log;
  std::string checkpoints;  // directory of rank<R>.ckpt
};

// `launch` is " launch ... -- ", `model` " train ..." and `extra` the run's own flags.
inline PipelineRun train_under_launch(const std::string& name, const std::string& launch,
                                      const std::string& model, const std::string& extra) {
  PipelineRun run;
  const std::string json = temp_path("pipe-" + name) + ".json";
  run.checkpoints = temp_path("pipe-" + name + "-ckpt");
  auto outcome = ferry::test::run(std::string(FERRY_BIN) + launch + FERRY_BIN + model + extra + " --json " +
                                  json + " --checkpoint " + run.checkpoints);
  REQUIRE(outcome.exit_code == 0);
  run.log = read_json(json);
  std::remove(json.c_str());
  return run;
}

// Every step's routing equal token for token, losses and gradient norms within 1e-6 relative; returns the
// largest difference.
inline double compare_steps(const PipelineRun& reference, const PipelineRun& piped, const std::string& name) {
  REQUIRE(piped.log["steps"].size() == reference.log["steps"].size());
  double worst = 0;
  for (std::size_t s = 0; s < reference.log["steps"].size(); ++s) {
    const auto& x = reference.log["steps"][s];
    const auto& y = piped.log["steps"][s];
    CHECK(x["tokens"] == y["tokens"]);
    CHECK(x["expert_load"] == y["expert_load"]);  // the same routing, token for token
    for (const char* key : {"loss", "main_loss", "mtp_loss", "balance_loss", "grad_norm"}) {
      const double diff = relative_difference(x[key].get<double>(), y[key].get<double>());
      INFO(name << " step " << s << " " << key << ": reference " << x[key].get<double>() << ", pipelined "
                << y[key].get<double>());
      CHECK(diff <= 1e-6);
      worst = std::max(worst, diff);
    }
  }
  std::printf("%s: largest relative difference of losses and gradient norms %.3g\n", name.c_str(), worst);
  return worst;
}

// Relative L2 difference over the whole model of parameters and of AdamW's first moments (a running sum of
// the gradients) between a pipelined run and the expert-parallel reference over the same `ranks`. Dense
// parameters: bitwise equal on every rank of each run. Experts: in the reference on rank e / (E / ranks); in
// the pipelined run (ranks / PP replicas) on every pipeline rank of replica e / (E / replicas), bitwise equal
// there.
inline double compare_pipeline_checkpoints(const PipelineRun& reference, const PipelineRun& piped,
                                           int ranks) {
  using namespace ferry::model;
  std::vector<TrainerState> ref, pipe;
  for (int r = 0; r < ranks; ++r) {
    ref.push_back(load_checkpoint(reference.checkpoints + "/rank" + std::to_string(r) + ".ckpt"));
    pipe.push_back(load_checkpoint(piped.checkpoints + "/rank" + std::to_string(r) + ".ckpt"));
  }
  for (int r = 1; r < ranks; ++r) CHECK(pipe[r].balance_bias == pipe[0].balance_bias);
  CHECK(pipe[0].balance_bias == ref[0].balance_bias);
  const Model<float> layout(ref[0].model);
  const int per_rank = ref[0].model.experts / ranks;
  const int pipeline_ranks = piped.log["pipeline_ranks"].get<int>();
  const int per_replica = ref[0].model.experts / (ranks / pipeline_ranks);
  L2Diff params_all, moments_all;
  for (const ParamInfo& info : layout.params().info()) {
    const bool expert = is_expert_param(info);
    const int slices = expert ? ref[0].model.experts : 1;
    const std::size_t slice = info.size / slices;
    for (int e = 0; e < slices; ++e) {
      const TrainerState& owner = ref[expert ? e / per_rank : 0];
      const int first = expert ? (e / per_replica) * pipeline_ranks : 0;
      const int holders = expert ? pipeline_ranks : ranks;
      const TrainerState& held = pipe[first];
      const std::size_t offset = info.offset + e * slice;
      for (std::size_t i = offset; i < offset + slice; ++i) {
        for (int r = first + 1; r < first + holders; ++r) REQUIRE(pipe[r].params[i] == held.params[i]);
      }
      params_all.add(held.params, owner.params, offset, slice);
      moments_all.add(held.adam_m, owner.adam_m, offset, slice);
    }
  }
  const double params = params_all.relative(), moments = moments_all.relative();
  std::printf("parameters differ by %.3g, first moments by %.3g (relative L2)\n", params, moments);
  CHECK(params <= 1e-6);
  CHECK(moments <= 1e-6);
  return std::max(params, moments);
}

}  // namespace ferry::test
