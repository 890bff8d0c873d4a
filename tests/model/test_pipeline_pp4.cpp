// PP = 4 on 2 nodes x 4 ranks with MTP on: 8 ranks = 4 pipeline ranks x 2 expert-parallel replicas, replica d
// on node d, so every stage's all-to-all crosses the nodes. DualPipe (both end ranks hold the embedding, the
// head and the MTP), DualPipeV (rank 0 holds stages 0 and 7) and 1F1B (the MTP on the last rank) take the
// steps of plain expert parallelism over the same 8 ranks; DualPipe's traces show all-to-all hidden behind
// compute with overlap on and none with it off.
#include <catch2/catch.hpp>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "ferry/model/pipeline/trace.hpp"
#include "pipeline_runs.hpp"

namespace {

using ferry::test::PipelineRun;
namespace pipe = ferry::model::pipeline;

// 8 layers, so that DualPipeV's 8 stages get one each (the first dense); tiny otherwise. The global batch of
// 8 x 2 rows is 8 micro-batches of one row per replica.
const std::string kModel =
    " train --layers 8 --dim 16 --heads 2 --experts 8 --topk 2 --groups 4 --max-nodes 2 --seq 8"
    " --expert-hidden 16 --ffn-hidden 32 --steps 2 --lr 0.003 --warmup 1 --seed 11 --data-seed 5 --batch 2";
const std::string kLaunch = " launch --nodes 2 --ranks-per-node 4 --timeout 120 -- ";
constexpr int kRanks = 8;

PipelineRun train(const std::string& name, const std::string& extra) {
  return ferry::test::train_under_launch(name, kLaunch, kModel, extra);
}

// The overlap of every rank and step of a trace file, summed.
pipe::OverlapMetrics overlap_of(const std::string& trace) {
  return pipe::sum_metrics(pipe::overlap_metrics(pipe::read_chrome_trace(trace)));
}

std::set<std::string> keys_of(const nlohmann::json& object) {
  std::set<std::string> keys;
  for (const auto& item : object.items()) keys.insert(item.key());
  return keys;
}

}  // namespace

TEST_CASE("PP = 4 on 2 nodes x 4 ranks with MTP: DualPipe, DualPipeV and 1F1B take the steps of plain EP",
          "[multiprocess]") {
  static const PipelineRun reference = train("pp4-reference", "");
  REQUIRE(reference.log["steps"].size() == 2);
  REQUIRE(reference.log["steps"][0]["mtp_loss"].get<double>() > 0);
  struct Schedule {
    std::string flags;
    int overlap;  // from the trace: 1 above zero, 0 exactly zero, -1 no trace
  };
  const std::string pp4 = " --pp 4 --micro-batches 8";
  const std::map<std::string, Schedule> schedules = {
      {"pp4-dualpipe", {" --schedule dualpipe" + pp4, 1}},
      {"pp4-dualpipe-no-overlap", {" --schedule dualpipe --no-overlap" + pp4, 0}},
      {"pp4-dualpipev", {" --schedule dualpipev" + pp4, -1}},
      {"pp4-1f1b", {" --schedule 1f1b" + pp4, -1}},
  };
  for (const auto& [name, schedule] : schedules) {
    SECTION(name) {
      const std::string trace = ferry::test::temp_path(name + "-trace") + ".json";
      const bool traced = schedule.overlap >= 0;
      const PipelineRun piped = train(name, schedule.flags + (traced ? " --trace " + trace : ""));
      ferry::test::compare_steps(reference, piped, name);
      ferry::test::compare_pipeline_checkpoints(reference, piped, kRanks);
      std::filesystem::remove_all(piped.checkpoints);
      if (!traced) continue;

      const pipe::OverlapMetrics overlap = overlap_of(trace);
      std::printf("%s: a2a in flight %.1f ms, of it under compute %.1f ms: overlap ratio %.3f\n",
                  name.c_str(), overlap.comm_s * 1e3, overlap.overlapped_s * 1e3, overlap.overlap_ratio);
      REQUIRE(overlap.comm_s > 0);
      if (schedule.overlap > 0)
        CHECK(overlap.overlap_ratio > 0);
      else
        CHECK(overlap.overlap_ratio == 0);

      // `ferry train --json` and `ferry trace --json` write the metrics in one form.
      const auto traced_json = ferry::test::run(std::string(FERRY_BIN) + " trace " + trace + " --json");
      REQUIRE(traced_json.exit_code == 0);
      const nlohmann::json from_trace = nlohmann::json::parse(traced_json.output);
      const nlohmann::json& from_train = piped.log.at("overlap_metrics");
      CHECK(keys_of(from_train.at("total")) == keys_of(from_trace.at("total")));
      REQUIRE(from_train.at("ranks").size() == kRanks);
      std::set<std::string> rank_keys = keys_of(from_trace.at("ranks")[0]);
      rank_keys.insert({"steps", "bubble_formula_s_per_step"});
      CHECK(keys_of(from_train.at("ranks")[0]) == rank_keys);
      std::filesystem::remove(trace);
    }
  }
}
