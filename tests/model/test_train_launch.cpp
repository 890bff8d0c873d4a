// `ferry train` expert-parallel across 2 nodes x 2 ranks (ferry dispatch/combine between them) against the
// single-process trainer on the same global batch: the same losses, gradient norms and expert loads, with
// tokens really crossing the fabric between the nodes; and gradients summed over the fabric, not the store.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
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

// The CI model: tiny, 3 steps; groups 4 = one per rank, so top-2 over 2 groups reaches up to 2 nodes.
const std::string kModel =
    " train --layers 2 --dim 32 --heads 4 --experts 8 --topk 2 --groups 4 --max-nodes 2 --seq 16"
    " --expert-hidden 32 --ffn-hidden 64 --steps 3 --lr 0.003 --warmup 2 --seed 11 --data-seed 5";

// Compares the single-process checkpoint with the expert-parallel ranks' ones (each expert against the rank
// that owns it): parameters and AdamW's first moment, a running sum of the gradients. Over the whole model
// both must agree to 1e-6 (relative L2). Per tensor the bound is 1e-5: a small expert that got few tokens has
// a gradient dominated by cancellation, where fp32 summation order alone moves it by a few 1e-6. Dense
// parameters must be bitwise the same on every rank. Returns the whole-model relative difference.
double compare_checkpoints(const std::string& single_dir, const std::string& launch_dir, int ranks) {
  using namespace ferry::model;
  const TrainerState single = load_checkpoint(single_dir + "/rank0.ckpt");
  std::vector<TrainerState> parts;
  for (int r = 0; r < ranks; ++r)
    parts.push_back(load_checkpoint(launch_dir + "/rank" + std::to_string(r) + ".ckpt"));
  const Model<float> layout(single.model);
  const int per_rank = single.model.experts / ranks;
  L2Diff params_all, moments_all;
  double worst_slice = 0;
  for (const ParamInfo& info : layout.params().info()) {
    if (!is_expert_param(info)) {
      for (int r = 1; r < ranks; ++r)
        for (std::size_t i = info.offset; i < info.offset + info.size; ++i)
          REQUIRE(parts[r].params[i] == parts[0].params[i]);
    }
    const int slices = is_expert_param(info) ? single.model.experts : 1;
    const std::size_t slice = info.size / slices;
    for (int e = 0; e < slices; ++e) {
      const TrainerState& owner = parts[is_expert_param(info) ? e / per_rank : 0];
      const std::size_t offset = info.offset + e * slice;
      L2Diff p, m;
      p.add(owner.params, single.params, offset, slice);
      m.add(owner.adam_m, single.adam_m, offset, slice);
      params_all.add(owner.params, single.params, offset, slice);
      moments_all.add(owner.adam_m, single.adam_m, offset, slice);
      INFO(info.name << " slice " << e << ": parameters differ by " << p.relative() << ", first moments by "
                     << m.relative());
      CHECK(p.relative() <= 1e-5);
      CHECK(m.relative() <= 1e-5);
      worst_slice = std::max({worst_slice, p.relative(), m.relative()});
    }
  }
  for (int r = 0; r < ranks; ++r) CHECK(parts[r].balance_bias == single.balance_bias);
  std::printf(
      "after 3 steps: parameters differ by %.3g, first moments by %.3g (whole model, relative L2); "
      "worst single tensor %.3g\n",
      params_all.relative(), moments_all.relative(), worst_slice);
  CHECK(params_all.relative() <= 1e-6);
  CHECK(moments_all.relative() <= 1e-6);
  return std::max(params_all.relative(), moments_all.relative());
}

}  // namespace

TEST_CASE("ferry train on 2 nodes x 2 ranks matches the single-process trainer", "[multiprocess]") {
  const std::string single_json = ferry::test::temp_path("train-single") + ".json";
  const std::string launch_json = ferry::test::temp_path("train-ep") + ".json";
  const std::string single_dir = ferry::test::temp_path("train-single-ckpt");
  const std::string launch_dir = ferry::test::temp_path("train-ep-ckpt");
  auto single = ferry::test::run(std::string(FERRY_BIN) + kModel + " --batch 8 --json " + single_json +
                                 " --checkpoint " + single_dir);
  REQUIRE(single.exit_code == 0);
  auto launched = ferry::test::run(
      std::string(FERRY_BIN) + " launch --nodes 2 --ranks-per-node 2 --timeout 120 -- " + FERRY_BIN + kModel +
      " --batch 2 --json " + launch_json + " --checkpoint " + launch_dir);
  REQUIRE(launched.exit_code == 0);

  const auto a = read_json(single_json), b = read_json(launch_json);
  CHECK(a["ranks"] == 1);
  CHECK(a["exchange"] == "local");
  CHECK(b["ranks"] == 4);
  CHECK(b["nodes"] == 2);
  CHECK(b["exchange"] == "ferry");
  REQUIRE(a["steps"].size() == 3);
  REQUIRE(b["steps"].size() == 3);
  double worst = 0;
  for (std::size_t s = 0; s < 3; ++s) {
    const auto& x = a["steps"][s];
    const auto& y = b["steps"][s];
    CHECK(x["tokens"] == y["tokens"]);
    CHECK(x["expert_load"] == y["expert_load"]);  // the same routing, token for token
    for (const char* key : {"loss", "main_loss", "mtp_loss", "balance_loss", "grad_norm"}) {
      const double diff = relative_difference(x[key].get<double>(), y[key].get<double>());
      INFO("step " << s << " " << key << ": single " << x[key].get<double>() << ", expert-parallel "
                   << y[key].get<double>());
      CHECK(diff <= 1e-6);
      worst = std::max(worst, diff);
    }
  }
  std::printf("largest relative difference of losses and gradient norms: %.3g\n", worst);
  compare_checkpoints(single_dir, launch_dir, 4);
  // Routing spans both nodes: tokens went out over the fabric in dispatch and came back in combine.
  CHECK(b["traffic"]["dispatch"]["fabric_messages"].get<double>() > 0);
  CHECK(b["traffic"]["combine"]["fabric_messages"].get<double>() > 0);
  std::remove(single_json.c_str());
  std::remove(launch_json.c_str());
  std::filesystem::remove_all(single_dir);
  std::filesystem::remove_all(launch_dir);
}

TEST_CASE("ferry train alone: local experts, and a one-rank ferry buffer giving the same steps",
          "[multiprocess]") {
  const std::string local_json = ferry::test::temp_path("train-local") + ".json";
  const std::string ferry_json = ferry::test::temp_path("train-ferry1") + ".json";
  const std::string small =
      " train --layers 2 --dim 16 --heads 2 --experts 4 --topk 2 --groups 2 --max-nodes 1"
      " --seq 8 --batch 2 --steps 2 --warmup 1";
  auto local = ferry::test::run(std::string(FERRY_BIN) + small + " --json " + local_json);
  REQUIRE(local.exit_code == 0);
  CHECK_THAT(local.output, Catch::Matchers::Contains("tok/s"));
  auto one = ferry::test::run(std::string(FERRY_BIN) + small + " --exchange ferry --json " + ferry_json);
  REQUIRE(one.exit_code == 0);
  const auto a = read_json(local_json), b = read_json(ferry_json);
  REQUIRE(a["steps"].size() == 2);
  REQUIRE(b["steps"].size() == 2);
  CHECK(b["exchange"] == "ferry");
  for (std::size_t s = 0; s < 2; ++s) {
    CHECK(a["steps"][s]["tokens_per_s"].get<double>() > 0);
    CHECK(a["steps"][s]["expert_load"] == b["steps"][s]["expert_load"]);
    CHECK(relative_difference(a["steps"][s]["loss"].get<double>(), b["steps"][s]["loss"].get<double>()) <=
          1e-6);
  }
  std::remove(local_json.c_str());
  std::remove(ferry_json.c_str());
}

TEST_CASE("ferry train sums gradients over the fabric: dense parameters past the store's 64 MiB message cap",
          "[multiprocess]") {
  // 9.4 M dense parameters: one step's gradients, packed in double, are 75 MB. Through the bootstrap store
  // (64 MiB per message) this step could not be taken; over the peer channel it is cut into small messages.
  const std::string json = ferry::test::temp_path("train-big-dense") + ".json";
  auto outcome =
      ferry::test::run(std::string(FERRY_BIN) + " launch --nodes 1 --ranks-per-node 2 -- " + FERRY_BIN +
                       " train --no-mtp --layers 1 --dense 1 --dim 1024 --heads 8 --ffn-hidden 1536"
                       " --seq 4 --batch 1 --steps 1 --json " +
                       json);
  REQUIRE(outcome.exit_code == 0);
  const auto log = read_json(json);
  REQUIRE(log["steps"].size() == 1);
  CHECK(std::isfinite(log["steps"][0]["grad_norm"].get<double>()));
  CHECK(log["steps"][0]["grad_norm"].get<double>() > 0);
  std::remove(json.c_str());
}
