// Checkpoints of a multi-rank run under `ferry launch` (1 node x 4 ranks, expert parallel): a run stopped
// and resumed twice takes bitwise the steps of one that never stopped; a set of rank files from a crash
// between two ranks' saves (one rank at step N + 1, the others at N), from two runs, or with one rank's file
// missing, is refused on every rank with an error naming the ranks and their steps and runs.
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>

#include "../peer/launch_run.hpp"
#include "ferry/model/checkpoint.hpp"
#include "train_compare.hpp"

namespace {

namespace fs = std::filesystem;
using ferry::test::read_json;

const std::string kLaunch = " launch --nodes 1 --ranks-per-node 4 --timeout 60 -- ";
const std::string kModel =
    " train --layers 2 --dim 16 --heads 2 --experts 8 --topk 2 --groups 4 --max-nodes 2 --seq 8"
    " --expert-hidden 16 --ffn-hidden 32 --steps 4 --warmup 1 --seed 3 --data-seed 4 --batch 2 --timeout 30";
constexpr int kRanks = 4;

// Runs `ferry train` on the 4 ranks with checkpoints in `dir`; returns the outcome and (on success) the log.
ferry::test::Outcome train(const std::string& dir, const std::string& extra, nlohmann::json* log = nullptr,
                           const std::string& model = kModel) {
  const std::string json = ferry::test::temp_path("ckpt-log") + ".json";
  auto outcome = ferry::test::run(std::string(FERRY_BIN) + kLaunch + FERRY_BIN + model + " --checkpoint " +
                                  dir + " --json " + json + extra);
  if (log && outcome.exit_code == 0) *log = read_json(json);
  fs::remove(json);
  return outcome;
}

std::string rank_file(const std::string& dir, int rank) {
  return dir + "/rank" + std::to_string(rank) + ".ckpt";
}

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// Every rank's checkpoint in `resumed` holds bitwise the state of the one in `straight`, at `step`.
void check_same_state(const std::string& straight, const std::string& resumed, int step) {
  for (int r = 0; r < kRanks; ++r) {
    INFO("rank " << r);
    const auto a = ferry::model::load_checkpoint(rank_file(straight, r));
    const auto b = ferry::model::load_checkpoint(rank_file(resumed, r));
    CHECK(a.step == step);
    CHECK(b.step == step);
    CHECK(b.job.rank == r);
    CHECK(b.job.world_size == kRanks);
    CHECK(same_bits(a.params, b.params));
    CHECK(same_bits(a.adam_v, b.adam_v));
    CHECK(same_bits(a.ema, b.ema));
    CHECK(a.balance_bias == b.balance_bias);
  }
}

}  // namespace

TEST_CASE("multi-rank checkpoints: resume matches the uninterrupted run, mixed sets are refused",
          "[multiprocess]") {
  const std::string straight = ferry::test::temp_path("ckpt-straight"),
                    split = ferry::test::temp_path("ckpt-split");
  const std::string at_step2 = ferry::test::temp_path("ckpt-at2"),
                    at_step3 = ferry::test::temp_path("ckpt-at3");
  nlohmann::json whole, last;
  REQUIRE(train(straight, "", &whole).exit_code == 0);
  REQUIRE(train(split, " --stop-after 2").exit_code == 0);
  fs::copy(split, at_step2);
  REQUIRE(train(split, " --resume --stop-after 1").exit_code == 0);
  fs::copy(split, at_step3);
  REQUIRE(train(split, " --resume", &last).exit_code == 0);

  {  // Stopped twice and resumed: bitwise the uninterrupted run.
    REQUIRE(last["steps"].size() == 1);
    CHECK(last["steps"][0]["step"] == 3);
    CHECK(last["steps"][0]["loss"] == whole["steps"][3]["loss"]);
    CHECK(last["steps"][0]["grad_norm"] == whole["steps"][3]["grad_norm"]);
    check_same_state(straight, split, 4);
  }

  {  // A crash between two ranks' saves: rank 0 at step 3, the others at 2.
    fs::copy_file(rank_file(at_step3, 0), rank_file(at_step2, 0), fs::copy_options::overwrite_existing);
    const auto start = std::chrono::steady_clock::now();
    const auto outcome = train(at_step2, " --resume");
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    CHECK(outcome.exit_code != 0);
    CHECK(seconds < 20);  // every rank gives up at once, none waits for a timeout
    CHECK_THAT(outcome.output, Catch::Contains("do not agree") && Catch::Contains("rank 0 (") &&
                                   Catch::Contains("at step 3") && Catch::Contains("rank 1 (") &&
                                   Catch::Contains("at step 2"));
    for (int r = 0; r < kRanks; ++r)  // the refusal left the files alone
      CHECK(ferry::model::load_checkpoint(rank_file(at_step2, r)).step == (r == 0 ? 3 : 2));
  }

  {  // Files of two runs at the same step: rank 1's file says it belongs to another run. (A set at the
     // run's last step is refused before the runs are compared: nothing would be left to train.)
    const std::string mixed = ferry::test::temp_path("ckpt-mixed");
    fs::copy(at_step3, mixed);
    auto other = ferry::model::load_checkpoint(rank_file(mixed, 1));
    other.job.run_id += 1;
    ferry::model::save_checkpoint(rank_file(mixed, 1), other);
    const auto outcome = train(mixed, " --resume");
    CHECK(outcome.exit_code != 0);
    const auto mine = ferry::model::load_checkpoint(rank_file(mixed, 0)).job.run_id;
    const auto theirs = ferry::model::load_checkpoint(rank_file(mixed, 1)).job.run_id;
    REQUIRE(mine != theirs);
    CHECK_THAT(outcome.output, Catch::Contains("do not agree") &&
                                   Catch::Contains("of run " + std::to_string(mine)) &&
                                   Catch::Contains("of run " + std::to_string(theirs)));
    fs::remove_all(mixed);
  }
  {  // One rank's file is gone: every rank fails naming it, none waits for it.
    fs::remove(rank_file(at_step3, 2));
    const auto outcome = train(at_step3, " --resume");
    CHECK(outcome.exit_code != 0);
    CHECK_THAT(outcome.output, Catch::Contains("cannot resume: rank 2: ") &&
                                   Catch::Contains("cannot open checkpoint " + rank_file(at_step3, 2)));
  }
  for (const std::string& dir : {straight, split, at_step2, at_step3}) fs::remove_all(dir);
}

// The pipelined trainer keeps its state per stage (the master's parameters, the head's MTP on the rank
// DualPipe puts it) and --recompute drops activations: a resume must still take bitwise the uninterrupted
// steps.
TEST_CASE("checkpoints resume bit for bit under 1F1B, DualPipe, DualPipeV and --recompute",
          "[multiprocess]") {
  // 4 layers (1 dense) so that DualPipeV's 4 stages get one each; PP = 2 x 2 expert-parallel replicas.
  const std::string model =
      " train --layers 4 --dim 16 --heads 2 --experts 8 --topk 2 --groups 4 --max-nodes 2 --seq 8"
      " --expert-hidden 16 --ffn-hidden 32 --steps 3 --warmup 1 --seed 5 --data-seed 6 --batch 2 --timeout "
      "30";
  // --recompute rides with 1F1B: one launch less per run, and it only changes what backward recomputes.
  const std::pair<const char*, const char*> runs[] = {
      {"1f1b-recompute", " --schedule 1f1b --pp 2 --micro-batches 4 --recompute"},
      {"dualpipe", " --schedule dualpipe --pp 2 --micro-batches 4"},
      {"dualpipev", " --schedule dualpipev --pp 2 --micro-batches 4"},
  };
  for (const auto& [name, flags] : runs) {
    SECTION(name) {
      const std::string straight = ferry::test::temp_path(std::string("ckpt-") + name),
                        split = ferry::test::temp_path(std::string("ckpt-split-") + name);
      nlohmann::json whole, last;
      REQUIRE(train(straight, flags, &whole, model).exit_code == 0);
      REQUIRE(train(split, flags + std::string(" --stop-after 1"), nullptr, model).exit_code == 0);
      REQUIRE(train(split, flags + std::string(" --resume"), &last, model).exit_code == 0);
      REQUIRE(whole["steps"].size() == 3);
      REQUIRE(last["steps"].size() == 2);
      for (int s = 0; s < 2; ++s) {
        INFO("step " << s + 1);
        CHECK(last["steps"][s]["step"] == s + 1);
        CHECK(last["steps"][s]["loss"] == whole["steps"][s + 1]["loss"]);
        CHECK(last["steps"][s]["grad_norm"] == whole["steps"][s + 1]["grad_norm"]);
      }
      check_same_state(straight, split, 3);
      for (const std::string& dir : {straight, split}) fs::remove_all(dir);
    }
  }
}
