// Pipelined training under `ferry launch` (2 nodes x 2 ranks, PP = 2 x 2 expert-parallel replicas whose
// all-to-all crosses the nodes) against plain expert parallelism over the same 4 ranks: every schedule takes
// the same steps. And the trace a pipelined run writes is a valid Chrome trace with both lanes on every rank.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "../peer/launch_run.hpp"
#include "ferry/model/checkpoint.hpp"
#include "ferry/model/distributed.hpp"
#include "ferry/model/model.hpp"
#include "train_compare.hpp"

namespace {

using ferry::test::L2Diff;
using ferry::test::read_json;
using ferry::test::relative_difference;

// 4 layers (1 dense) so that DualPipeV's 4 stages each get one; 8 experts over 4 groups, top-2 of 2 groups.
const std::string kModel =
    " train --no-mtp --layers 4 --dim 32 --heads 4 --experts 8 --topk 2 --groups 4 --max-nodes 2 --seq 16"
    " --expert-hidden 32 --ffn-hidden 64 --steps 3 --lr 0.003 --warmup 2 --seed 11 --data-seed 5 --batch 2";

const std::string kLaunch = " launch --nodes 2 --ranks-per-node 2 --timeout 120 -- ";

struct Run {
  nlohmann::json log;
  std::string checkpoints;
};

Run train(const std::string& name, const std::string& extra) {
  Run run;
  const std::string json = ferry::test::temp_path("pipe-" + name) + ".json";
  run.checkpoints = ferry::test::temp_path("pipe-" + name + "-ckpt");
  auto outcome = ferry::test::run(std::string(FERRY_BIN) + kLaunch + FERRY_BIN + kModel + extra + " --json " +
                                  json + " --checkpoint " + run.checkpoints);
  REQUIRE(outcome.exit_code == 0);
  run.log = read_json(json);
  std::remove(json.c_str());
  return run;
}

// Relative L2 difference over the whole model of parameters and of AdamW's first moments (a running sum of
// the gradients) between a pipelined run and the expert-parallel reference. Dense parameters: bitwise equal
// on every rank of each run. Experts: in the reference on rank e / (E/4); in the pipelined run (PP = 2, so 2
// replicas) on both pipeline ranks of replica e / (E/2), bitwise equal there.
double compare_checkpoints(const Run& reference, const Run& piped) {
  using namespace ferry::model;
  std::vector<TrainerState> ref, pipe;
  for (int r = 0; r < 4; ++r) {
    ref.push_back(load_checkpoint(reference.checkpoints + "/rank" + std::to_string(r) + ".ckpt"));
    pipe.push_back(load_checkpoint(piped.checkpoints + "/rank" + std::to_string(r) + ".ckpt"));
  }
  for (int r = 1; r < 4; ++r) CHECK(pipe[r].balance_bias == pipe[0].balance_bias);
  CHECK(pipe[0].balance_bias == ref[0].balance_bias);
  const Model<float> layout(ref[0].model);
  const int per_rank = ref[0].model.experts / 4;
  const int pipeline_ranks = piped.log["pipeline_ranks"].get<int>();
  const int per_replica = ref[0].model.experts / (4 / pipeline_ranks);
  L2Diff params_all, moments_all;
  for (const ParamInfo& info : layout.params().info()) {
    const int slices = is_expert_param(info) ? ref[0].model.experts : 1;
    const std::size_t slice = info.size / slices;
    for (int e = 0; e < slices; ++e) {
      const bool expert = is_expert_param(info);
      const TrainerState& owner = ref[expert ? e / per_rank : 0];
      const int first = expert ? (e / per_replica) * pipeline_ranks : 0;
      const int holders = expert ? pipeline_ranks : 4;
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

}  // namespace

TEST_CASE("every pipeline schedule on 2 nodes x 2 ranks takes the steps of plain expert parallelism",
          "[multiprocess]") {
  // Catch runs the test case once per section: train the reference once.
  static const Run reference = train("reference", "");
  REQUIRE(reference.log["steps"].size() == 3);
  const std::map<std::string, std::string> schedules = {
      {"none", " --schedule none --micro-batches 2"},
      {"1f1b", " --schedule 1f1b --pp 2 --micro-batches 4"},
      {"dualpipe", " --schedule dualpipe --pp 2 --micro-batches 4"},
      {"dualpipev", " --schedule dualpipev --pp 2 --micro-batches 4"},
      {"dualpipe-no-overlap", " --schedule dualpipe --pp 2 --micro-batches 4 --no-overlap"},
  };
  for (const auto& [name, flags] : schedules) {
    SECTION(name) {
      const Run piped = train(name, flags);
      REQUIRE(piped.log["steps"].size() == 3);
      double worst = 0;
      for (std::size_t s = 0; s < 3; ++s) {
        const auto& x = reference.log["steps"][s];
        const auto& y = piped.log["steps"][s];
        CHECK(x["tokens"] == y["tokens"]);
        CHECK(x["expert_load"] == y["expert_load"]);  // the same routing, token for token
        for (const char* key : {"loss", "main_loss", "balance_loss", "grad_norm"}) {
          const double diff = relative_difference(x[key].get<double>(), y[key].get<double>());
          INFO(name << " step " << s << " " << key << ": reference " << x[key].get<double>() << ", pipelined "
                    << y[key].get<double>());
          CHECK(diff <= 1e-6);
          worst = std::max(worst, diff);
        }
      }
      std::printf("%s: largest relative difference of losses and gradient norms %.3g\n", name.c_str(), worst);
      compare_checkpoints(reference, piped);
      std::filesystem::remove_all(piped.checkpoints);
    }
  }
}

TEST_CASE("a DualPipe run's trace is valid JSON with compute and comm lanes on every rank",
          "[multiprocess]") {
  const std::string trace = ferry::test::temp_path("pipe-trace") + ".json";
  const std::string svg = ferry::test::temp_path("pipe-trace") + ".svg";
  auto outcome = ferry::test::run(std::string(FERRY_BIN) + kLaunch + FERRY_BIN + kModel +
                                  " --schedule dualpipe --pp 2 --micro-batches 4 --trace " + trace);
  REQUIRE(outcome.exit_code == 0);
  CHECK_THAT(outcome.output, Catch::Matchers::Contains("overlap"));
  CHECK_THAT(outcome.output, Catch::Matchers::Contains("bubble"));

  std::ifstream in(trace);
  REQUIRE(in.good());
  const nlohmann::json doc = nlohmann::json::parse(in);  // throws (fails the test) on invalid JSON
  REQUIRE(doc.contains("traceEvents"));
  std::map<int, std::set<int>> lanes;  // pid -> tids with complete events
  std::set<std::string> names;
  for (const auto& e : doc["traceEvents"]) {
    if (e["ph"] != "X") continue;
    lanes[e["pid"].get<int>()].insert(e["tid"].get<int>());
    names.insert(e["name"].get<std::string>());
    CHECK(e["dur"].get<double>() >= 0);
  }
  REQUIRE(lanes.size() == 4);
  for (const auto& [pid, tids] : lanes) {
    INFO("rank " << pid);
    CHECK(tids.count(0) == 1);  // compute
    CHECK(tids.count(1) == 1);  // comm
  }
  for (const char* name : {"attn(F)", "mlp(F)", "attn(B)", "mlp(B)", "dispatch(F)", "combine(F)",
                           "dispatch(B)", "combine(B)", "pp-recv", "pp-send", "F", "F&B", "W", "step"})
    CHECK(names.count(name) == 1);

  auto drawn = ferry::test::run(std::string(FERRY_BIN) + " trace " + trace + " --svg " + svg);
  REQUIRE(drawn.exit_code == 0);
  std::ifstream picture(svg);
  std::string first_line;
  std::getline(picture, first_line);
  CHECK_THAT(first_line, Catch::Matchers::Contains("<svg"));
  std::remove(trace.c_str());
  std::remove(svg.c_str());
}

TEST_CASE("ferry train refuses pipeline shapes it cannot run, naming the problem", "[multiprocess]") {
  const std::string model = std::string(FERRY_BIN) +
                            " train --dim 16 --heads 2 --experts 4 --topk 2 --groups 2 --max-nodes 1 --seq 8"
                            " --steps 1 --timeout 20";
  struct Case {
    std::string flags, message;
  };
  const std::vector<Case> cases = {
      {" --layers 4 --schedule dualpipe", "--no-mtp"},
      {" --layers 4 --no-mtp --schedule zigzag", "zigzag"},
      {" --layers 4 --no-mtp --schedule dualpipe --pp 3", "even"},
      {" --layers 4 --no-mtp --schedule 1f1b --pp 2", "does not divide the job's 1 ranks"},
      {" --layers 4 --no-mtp --schedule none --micro-batches 3 --batch 4", "does not split"},
      {" --layers 1 --dense 0 --no-mtp --schedule none --micro-batches 2 --batch 2", ""},
  };
  for (const Case& c : cases) {
    auto outcome = ferry::test::run(model + c.flags);
    INFO(c.flags);
    if (c.message.empty()) {
      CHECK(outcome.exit_code == 0);  // the control: a legal shape runs
      continue;
    }
    CHECK(outcome.exit_code != 0);
    CHECK_THAT(outcome.output, Catch::Matchers::Contains(c.message));
  }
}
