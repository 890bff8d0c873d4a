// Training behaviour of the float model: it learns the synthetic corpus, the bias balancing keeps experts
// evenly loaded (and its absence does not), checkpoints resume bit for bit; plus data and config plumbing.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <climits>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/model/checkpoint.hpp"
#include "ferry/model/data.hpp"
#include "ferry/model/json.hpp"
#include "ferry/model/trainer.hpp"

using namespace ferry::model;
namespace fs = std::filesystem;

namespace {

// A scratch directory removed with everything in it when the test ends.
class TempDir {
 public:
  TempDir() {
    static int counter = 0;
    path_ = fs::temp_directory_path() /
            ("ferry-model-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ignored;
    fs::remove_all(path_, ignored);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

std::shared_ptr<const DataSource> corpus() {
  static const auto data = std::make_shared<const DataSource>(DataSource::synthetic(7, 1 << 20));
  return data;
}

bool bitwise_equal(double a, double b) {
  return std::memcmp(&a, &b, sizeof a) == 0;
}

ModelConfig small_moe_config() {
  ModelConfig m;
  m.seq = 16;
  m.layers = 2;
  m.n_dense = 1;
  m.dim = 32;
  m.heads = 2;
  m.ffn_hidden = 64;
  m.experts = 8;
  m.topk = 2;
  m.groups = 4;
  m.max_groups = 2;
  m.expert_hidden = 16;
  m.mtp = true;
  return m;
}

// What the checkpoint tests train: two rows a step, three steps.
TrainConfig checkpoint_run() {
  TrainConfig t;
  t.batch = 2;
  t.steps = 3;
  return t;
}

}  // namespace

TEST_CASE("training on the synthetic corpus learns its structure", "[model][train]") {
  // 150 steps of 8 × 32 bytes (about 3 s in a Release build on one core).
  ModelConfig m;
  m.seq = 32;
  m.layers = 2;
  m.n_dense = 1;
  m.dim = 64;
  m.heads = 4;
  m.ffn_hidden = 128;
  m.experts = 8;
  m.topk = 2;
  m.groups = 4;
  m.max_groups = 2;
  m.expert_hidden = 64;
  TrainConfig t;
  t.batch = 8;
  t.steps = 150;
  t.lr = 3e-3;
  t.warmup_steps = 10;
  Trainer trainer(m, t, corpus());
  std::vector<StepStats> history;
  for (int s = 0; s < t.steps; ++s) history.push_back(trainer.step());

  // The small init makes the first prediction nearly uniform over 256 bytes.
  REQUIRE(std::abs(history.front().main_loss - std::log(256.0)) < 0.1);
  double last = 0;
  for (std::size_t s = history.size() - 20; s < history.size(); ++s) last += history[s].main_loss / 20;
  const double unigram = corpus()->unigram_entropy();
  INFO("mean main loss of the last 20 steps " << last << ", corpus unigram entropy " << unigram);
  // No predictor that ignores context can beat the unigram entropy (about 3.04 nats here); ending 0.5 nats
  // under it means the model uses context: words, the grammar, counting. (It reaches about 1.85.)
  REQUIRE(unigram > 2.5);
  REQUIRE(last < unigram - 0.5);
  REQUIRE(last < 2.5);                     // and far below log(256) = 5.545 of a model that knows nothing
  REQUIRE(history.back().mtp_loss < 2.5);  // the MTP head learned too
  REQUIRE(std::all_of(trainer.ema().begin(), trainer.ema().end(), [](float e) { return std::isfinite(e); }));
}

TEST_CASE("bias balancing evens out expert load, without it a skewed start stays skewed",
          "[model][train][moe]") {
  // One MoE layer, E = 8, K = 2, 8 × 32 = 256 tokens per step, so a perfectly balanced expert gets 64 tokens.
  // The run starts skewed: bias_e = 0.1 · (7 - e) / 7 favours the low experts (max/mean ≈ 2.5 at the first
  // step, where all-on-two-experts would be E / K = 4).
  //
  // Bound 1.6 on the mean of max/mean over the last 50 of 300 steps: were tokens routed independently with
  // equal odds, an expert's count would be Binomial(256, 1/4) (sd ≈ 7) and the largest of 8 about 2 sd over
  // the mean, ≈ 1.2; bytes of one window route alike, which shrinks the effective sample and widens that to
  // ≈ 1.35 (what balanced runs show). 1.6 leaves room for that and still sits far under the skewed 4.
  auto run = [](double gamma) {
    ModelConfig m;
    m.seq = 32;
    m.layers = 1;
    m.n_dense = 0;
    m.dim = 32;
    m.heads = 2;
    m.experts = 8;
    m.topk = 2;
    m.groups = 4;
    m.max_groups = 2;
    m.expert_hidden = 32;
    m.mtp = false;
    TrainConfig t;
    t.batch = 8;
    t.steps = 300;
    t.bias_update_rate = gamma;
    Trainer trainer(m, t, corpus());
    auto& bias = trainer.model().moe_layers().at(0)->bias();
    for (int e = 0; e < 8; ++e) bias[e] = 0.1f * static_cast<float>(7 - e) / 7.0f;
    double tail_mean = 0, first = 0;
    for (int s = 0; s < t.steps; ++s) {
      const StepStats stats = trainer.step();
      if (s == 0) first = stats.load_max_over_mean;
      if (s >= t.steps - 50) tail_mean += stats.load_max_over_mean / 50;
    }
    return std::make_pair(first, tail_mean);
  };
  const auto [balanced_first, balanced] = run(0.01);
  const auto [unbalanced_first, unbalanced] = run(0.0);
  INFO("gamma 0.01: first step " << balanced_first << ", last 50 steps " << balanced);
  INFO("gamma 0:    first step " << unbalanced_first << ", last 50 steps " << unbalanced);
  REQUIRE(balanced_first > 2.0);  // both start skewed (identical first steps)
  REQUIRE(unbalanced_first > 2.0);
  REQUIRE(balanced < 1.6);
  REQUIRE(unbalanced > 3.0);  // the gate alone does not undo it: nearly E/K
}

TEST_CASE("a resumed run continues with bitwise the same losses", "[model][train][checkpoint]") {
  const ModelConfig m = small_moe_config();
  TrainConfig t;
  t.batch = 4;
  t.steps = 8;
  t.warmup_steps = 2;
  const int k = 3;
  TempDir dir;

  Trainer straight(m, t, corpus());
  std::vector<StepStats> expected;
  for (int s = 0; s < t.steps; ++s) expected.push_back(straight.step());

  {
    Trainer first(m, t, corpus());
    for (int s = 0; s < k; ++s) first.step();
    first.save(dir.file("ckpt"));
  }
  Trainer resumed(m, t, corpus());
  resumed.load(dir.file("ckpt"));
  REQUIRE(resumed.steps_done() == k);
  for (int s = k; s < t.steps; ++s) {
    const StepStats got = resumed.step();
    CAPTURE(s, got.loss, expected[s].loss);
    REQUIRE(got.step == expected[s].step);
    REQUIRE(bitwise_equal(got.loss, expected[s].loss));
    REQUIRE(bitwise_equal(got.main_loss, expected[s].main_loss));
    REQUIRE(bitwise_equal(got.mtp_loss, expected[s].mtp_loss));
    REQUIRE(bitwise_equal(got.balance_loss, expected[s].balance_loss));
    REQUIRE(bitwise_equal(got.grad_norm, expected[s].grad_norm));
    REQUIRE(got.expert_load == expected[s].expert_load);
  }
  const auto a = straight.model().params().values(), b = resumed.model().params().values();
  REQUIRE(std::memcmp(a.data(), b.data(), a.size_bytes()) == 0);
  REQUIRE(std::memcmp(straight.ema().data(), resumed.ema().data(), straight.ema().size() * sizeof(float)) ==
          0);
  for (std::size_t l = 0; l < straight.model().moe_layers().size(); ++l)
    REQUIRE(straight.model().moe_layers()[l]->bias() == resumed.model().moe_layers()[l]->bias());
}

TEST_CASE("run_training splits and resumes through checkpoints", "[model][train][checkpoint]") {
  TempDir dir;
  RunOptions options;
  options.model = small_moe_config();
  options.train.batch = 2;
  options.train.steps = 5;
  options.data.synthetic_bytes = 1 << 14;
  const auto whole = run_training(options);
  REQUIRE(whole.size() == 5);

  options.save_to = dir.file("run.ckpt");
  options.stop_after = 2;
  int reported = 0;
  const auto part1 = run_training(options, [&](const StepStats&) { ++reported; });
  REQUIRE(part1.size() == 2);
  REQUIRE(reported == 2);
  options.resume_from = dir.file("run.ckpt");
  options.stop_after = 0;
  const auto part2 = run_training(options);
  REQUIRE(part2.size() == 3);
  for (int s = 0; s < 5; ++s) {
    const StepStats& got = s < 2 ? part1[s] : part2[s - 2];
    REQUIRE(got.step == s);
    REQUIRE(bitwise_equal(got.loss, whole[s].loss));
  }
  REQUIRE(format_step(whole[0]).find("loss") != std::string::npos);
  const nlohmann::json j = whole[0];
  REQUIRE(j.at("expert_load").size() == 2);  // block 1 and the MTP block
}

TEST_CASE("checkpoints refuse other models, corruption and foreign files", "[model][checkpoint]") {
  TempDir dir;
  const TrainConfig t = checkpoint_run();
  Trainer trainer(small_moe_config(), t, corpus());
  trainer.step();
  const std::string path = dir.file("ckpt");
  trainer.save(path);
  REQUIRE_FALSE(fs::exists(path + ".tmp"));

  ModelConfig other = small_moe_config();
  other.expert_hidden = 24;
  Trainer different(other, t, corpus());
  REQUIRE_THROWS_WITH(different.load(path), Catch::Contains("expert_hidden"));

  std::vector<char> bytes;
  {
    std::ifstream in(path, std::ios::binary);
    bytes.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  auto write = [&](const std::string& name, const std::vector<char>& content) {
    std::ofstream out(dir.file(name), std::ios::binary);
    out.write(content.data(), static_cast<std::streamsize>(content.size()));
    return dir.file(name);
  };
  auto flipped = bytes;
  flipped[bytes.size() / 2] ^= 0x40;
  REQUIRE_THROWS_WITH(load_checkpoint(write("flipped", flipped)), Catch::Contains("checksum"));
  const std::vector<char> truncated(bytes.begin(), bytes.begin() + 30);
  REQUIRE_THROWS_AS(load_checkpoint(write("truncated", truncated)), ferry::Error);
  const std::vector<char> text = {'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd', '\n'};
  REQUIRE_THROWS_WITH(load_checkpoint(write("text", text)), Catch::Contains("not a ferry checkpoint"));
  REQUIRE_THROWS_WITH(load_checkpoint(dir.file("missing")), Catch::Contains("missing"));
}

// No ';' in a test name: ctest would split it into two names that match nothing
// (tests/common/catch_main.cpp).
TEST_CASE("checkpoints carry the job fingerprint, and a file of another layout is refused naming both values",
          "[model][checkpoint]") {
  TempDir dir;
  const TrainConfig t = checkpoint_run();
  Trainer trainer(small_moe_config(), t, corpus());
  trainer.step();
  const std::string path = dir.file("ckpt");
  {
    std::ofstream stale(path + ".tmp");  // a crash's leftover does not get in the way
    stale << "half a checkpoint";
  }
  trainer.save(path);
  REQUIRE_FALSE(fs::exists(path + ".tmp"));
  const TrainerState saved = load_checkpoint(path);
  CHECK(saved.step == 1);
  CHECK(saved.job == JobFingerprint{trainer.run_id(), 1, 0, 1});

  // The same model and run, but written by rank 1 of 2 ranks, or with 2 pipeline ranks per replica.
  const auto refused = [&](const JobFingerprint& job) {
    TrainerState state = saved;
    state.job = job;
    save_checkpoint(dir.file("other"), state);
    Trainer fresh(small_moe_config(), t, corpus());
    try {
      fresh.load(dir.file("other"));
    } catch (const ferry::Error& e) {
      CHECK(e.code() == ferry::Errc::invalid_argument);
      return std::string(e.what());
    }
    return std::string("loaded");
  };
  CHECK_THAT(refused({saved.job.run_id, 2, 0, 1}), Catch::Contains("run of 2 rank(s), this run has 1"));
  CHECK_THAT(refused({saved.job.run_id, 1, 1, 1}), Catch::Contains("is rank 1's, read by rank 0"));
  CHECK_THAT(refused({saved.job.run_id, 1, 0, 2}),
             Catch::Contains("with 2 pipeline rank(s) per replica, this run has 1"));
  CHECK(refused({saved.job.run_id + 1, 1, 0, 1}) ==
        "loaded");  // another run id alone: one file, nothing to mix

  // A resumed run keeps the run's id.
  Trainer resumed(small_moe_config(), t, corpus());
  resumed.load(path);
  CHECK(resumed.run_id() == trainer.run_id());
  CHECK(resumed.steps_done() == 1);

  CHECK_THROWS_WITH(trainer.save(dir.file("no-such-dir/ckpt")), Catch::Contains("no-such-dir/ckpt.tmp"));
}

TEST_CASE("a checkpoint whose step is not below the run's steps, or negative, is refused by number",
          "[model][checkpoint]") {
  TempDir dir;
  const TrainConfig t = checkpoint_run();  // 3 steps
  Trainer trainer(small_moe_config(), t, corpus());
  trainer.step();
  const std::string path = dir.file("ckpt");
  trainer.save(path);
  TrainerState state = load_checkpoint(path);
  const auto refusal = [&](std::int64_t step) {
    state.step = step;
    save_checkpoint(path, state);  // a valid checksum over the step
    Trainer fresh(small_moe_config(), t, corpus());
    try {
      fresh.load(path);
    } catch (const ferry::Error& e) {
      CHECK(e.code() == ferry::Errc::invalid_argument);
      CHECK(fresh.steps_done() == 0);
      return std::string(e.what());
    }
    return std::string("loaded");
  };
  CHECK(refusal(2) == "loaded");
  CHECK_THAT(refusal(3),
             Catch::Contains("checkpoint " + path + " is at step 3, not below the run's 3 steps"));
  CHECK_THAT(refusal(INT64_MAX),
             Catch::Contains("is at step 9223372036854775807, not below the run's 3 steps") &&
                 Catch::Contains("nothing is left to train"));
  CHECK_THAT(refusal(-1), Catch::Contains("checkpoint " + path + " is malformed: step -1"));

  // A file far larger than this model's checkpoint can be is refused unread.
  {
    std::ofstream big(dir.file("big"), std::ios::binary);
    big.seekp(std::streamoff{64} << 20);
    big.put('x');
  }
  Trainer fresh(small_moe_config(), t, corpus());
  REQUIRE_THROWS_WITH(fresh.load(dir.file("big")), Catch::Contains("holds 64 MiB, more than the"));
}

TEST_CASE("a data file is read no further than its limit", "[model][data]") {
  TempDir dir;
  const std::string path = dir.file("five-k.txt");
  std::ofstream(path) << std::string(5000, 'a');
  REQUIRE(DataSource::from_file(path, 5000).bytes().size() == 5000);
  REQUIRE_THROWS_WITH(DataSource::from_file(path, 4096),
                      Catch::Contains("data file " + path + " holds 4.88 KiB, more than the 4 KiB"));
  // A device never ends: reading stops one byte past the limit.
  try {
    DataSource::from_file("/dev/zero", 4096);
    FAIL("/dev/zero was read");
  } catch (const ferry::Error& e) {
    CHECK(e.code() == ferry::Errc::invalid_argument);
    CHECK_THAT(e.what(),
               Catch::Contains("data file /dev/zero holds more than the 4 KiB a data file may have"));
  }
  REQUIRE_THROWS_WITH(DataSource::from_file(dir.file("")), Catch::Contains("is a directory"));
  DataConfig config;
  config.path = path;
  config.max_file_bytes = 100;
  REQUIRE_THROWS_WITH(DataSource::from_config(config), Catch::Contains("more than the 100 B"));
  REQUIRE(kMaxDataFileBytes == std::uint64_t{256} << 20);
}

TEST_CASE("synthetic corpus is deterministic and structured, file loader and batches", "[model][data]") {
  const auto a = synthetic_corpus(3, 4096), b = synthetic_corpus(3, 4096), c = synthetic_corpus(4, 4096);
  REQUIRE(a.size() == 4096);
  REQUIRE(a == b);
  REQUIRE(a != c);
  // Every complete copy line repeats its word.
  const std::string text(a.begin(), a.end());
  int copies = 0;
  for (std::size_t pos = text.find("copy "); pos != std::string::npos; pos = text.find("copy ", pos + 1)) {
    const std::size_t eq = text.find(" = ", pos), end = text.find('\n', pos);
    if (end == std::string::npos) break;
    const std::string word = text.substr(pos + 5, eq - pos - 5);
    REQUIRE(text.substr(eq + 3, end - eq - 3) == word);
    ++copies;
  }
  REQUIRE(copies > 10);

  TempDir dir;
  const std::string path = dir.file("data.txt");
  {
    std::ofstream out(path, std::ios::binary);
    out << "abcdefghij";
  }
  const DataSource file = DataSource::from_file(path);
  REQUIRE(file.bytes().size() == 10);
  Rng rng(5);
  const auto batch = file.sample(rng, 3, 4);  // windows of 6 bytes
  REQUIRE(batch.size() == 18);
  for (int r = 0; r < 3; ++r)
    for (int j = 1; j < 6; ++j) REQUIRE(batch[r * 6 + j] == batch[r * 6 + j - 1] + 1);  // contiguous windows
  REQUIRE_THROWS_WITH(file.sample(rng, 1, 9), Catch::Contains("fewer than one window"));
  REQUIRE_THROWS_WITH(DataSource::from_file(dir.file("nope.txt")), Catch::Contains("nope.txt"));
  DataConfig config;
  config.path = path;
  REQUIRE(DataSource::from_config(config).name() == path);
}

TEST_CASE("configs round-trip through JSON and unknown keys are refused", "[model]") {
  ModelConfig m = small_moe_config();
  m.route_scale = 2.5;
  const nlohmann::json j = m;
  const ModelConfig back = j.get<ModelConfig>();
  REQUIRE(config_difference(m, back).empty());
  ModelConfig changed = back;
  changed.topk = 1;
  REQUIRE(config_difference(m, changed).find("topk") == 0);
  REQUIRE_THROWS_WITH(nlohmann::json::parse(R"({"dimm": 3})").get<ModelConfig>(), Catch::Contains("dimm"));
  TrainConfig t;
  t.lr = 0.5;
  REQUIRE(nlohmann::json(t).get<TrainConfig>().lr == 0.5);
  TrainConfig bad;
  bad.batch = 0;
  REQUIRE_THROWS_WITH(bad.validate(), Catch::Contains("TrainConfig.batch"));
}
