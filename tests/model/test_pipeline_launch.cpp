// Pipelined training without MTP under `ferry launch` (2 nodes x 2 ranks, PP = 2 x 2 expert-parallel replicas
// whose all-to-all crosses the nodes) against plain expert parallelism over the same 4 ranks: every schedule
// takes the same steps. And the trace a pipelined run writes is a valid Chrome trace with both lanes on every
// rank; --recompute moves no bit of the parameters and lowers the activation peak. PP = 4 with MTP:
// test_pipeline_pp4.cpp.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "pipeline_runs.hpp"

namespace {

using ferry::test::PipelineRun;

// 4 layers (1 dense) so that DualPipeV's 4 stages each get one; 8 experts over 4 groups, top-2 of 2 groups.
const std::string kModel =
    " train --no-mtp --layers 4 --dim 32 --heads 4 --experts 8 --topk 2 --groups 4 --max-nodes 2 --seq 16"
    " --expert-hidden 32 --ffn-hidden 64 --steps 3 --lr 0.003 --warmup 2 --seed 11 --data-seed 5 --batch 2";

const std::string kLaunch = " launch --nodes 2 --ranks-per-node 2 --timeout 120 -- ";

PipelineRun train(const std::string& name, const std::string& extra) {
  return ferry::test::train_under_launch(name, kLaunch, kModel, extra);
}

}  // namespace

TEST_CASE("every pipeline schedule on 2 nodes x 2 ranks takes the steps of plain expert parallelism",
          "[multiprocess]") {
  // Catch runs the test case once per section: train the reference once.
  static const PipelineRun reference = train("reference", "");
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
      const PipelineRun piped = train(name, flags);
      REQUIRE(piped.log["steps"].size() == 3);
      ferry::test::compare_steps(reference, piped, name);
      ferry::test::compare_pipeline_checkpoints(reference, piped, 4);
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

TEST_CASE("ferry train --recompute under DualPipe: the same parameters bit for bit, a smaller peak",
          "[multiprocess]") {
  // One node, so that the tsan preset runs it (CMakePresets.json).
  const std::string launch = " launch --nodes 1 --ranks-per-node 4 --timeout 120 -- ";
  const std::string flags = " --schedule dualpipe --pp 2 --micro-batches 4";
  const PipelineRun stored = ferry::test::train_under_launch("stored", launch, kModel, flags);
  const PipelineRun recomputed =
      ferry::test::train_under_launch("recomputed", launch, kModel, flags + " --recompute");
  for (std::size_t s = 0; s < 3; ++s) {
    const auto& a = stored.log["steps"][s];
    const auto& b = recomputed.log["steps"][s];
    INFO("step " << s << ": activation peak " << a["activation_peak_bytes"] << " bytes stored, "
                 << b["activation_peak_bytes"] << " recomputed");
    CHECK(a["loss"] == b["loss"]);
    CHECK(a["grad_norm"] == b["grad_norm"]);
    CHECK(b["activation_peak_bytes"].get<std::int64_t>() < a["activation_peak_bytes"].get<std::int64_t>());
  }
  for (int r = 0; r < 4; ++r) {
    const std::string file = "/rank" + std::to_string(r) + ".ckpt";
    const auto a = ferry::model::load_checkpoint(stored.checkpoints + file);
    const auto b = ferry::model::load_checkpoint(recomputed.checkpoints + file);
    INFO("rank " << r);
    REQUIRE(a.params.size() == b.params.size());
    CHECK(std::memcmp(a.params.data(), b.params.data(), a.params.size() * sizeof(float)) == 0);
    CHECK(std::memcmp(a.adam_m.data(), b.adam_m.data(), a.adam_m.size() * sizeof(float)) == 0);
  }
  std::filesystem::remove_all(stored.checkpoints);
  std::filesystem::remove_all(recomputed.checkpoints);
}

TEST_CASE("ferry train refuses pipeline shapes it cannot run, naming the problem", "[multiprocess]") {
  const std::string model = std::string(FERRY_BIN) +
                            " train --dim 16 --heads 2 --experts 4 --topk 2 --groups 2 --max-nodes 1 --seq 8"
                            " --steps 1 --timeout 20";
  struct Case {
    std::string flags, message;
  };
  const std::vector<Case> cases = {
      {" --layers 4 --no-mtp --schedule zigzag", "zigzag"},
      {" --layers 4 --no-mtp --schedule dualpipe --pp 3", "even"},
      {" --layers 4 --no-mtp --schedule 1f1b --pp 2", "does not divide the job's 1 ranks"},
      {" --layers 4 --no-mtp --schedule none --micro-batches 3 --batch 4", "does not split"},
      {" --layers 1 --dense 0 --no-mtp --schedule none --micro-batches 2 --batch 2", ""},
      {" --layers 2 --schedule none --micro-batches 2 --batch 2 --recompute", ""},  // MTP on
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
