// What a DeepEP user reaches for beyond plain dispatch/combine: combine returning the topk weights and adding
// a bias, per-expert counts aligned for grouped GEMMs, a per-call Config (num_sms, chunk sizes) that never
// changes the results, Config files, worst-case outputs that overflow without spoiling the Buffer, and cached
// dispatch along a worst-case handle. Every result is compared exactly with the reference.
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>

#include "../peer/rank_threads.hpp"
#include "cluster_run.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/protocol/numeric.hpp"

using namespace ferry;
using namespace ferry::test;

namespace {

ScenarioShape shape_of(int nodes, int locals, DType dtype) {
  ScenarioShape shape;
  shape.num_nodes = nodes;
  shape.local_size = locals;
  shape.experts_per_rank = 2;
  shape.num_topk = std::min(4, 2 * nodes * locals);
  shape.hidden = 72;
  shape.dtype = dtype;
  shape.max_tokens = 30;
  shape.max_nodes = std::min(nodes, 3);
  return shape;
}

// [rows, hidden] random values of `dtype` (bf16 or fp32).
std::vector<std::uint8_t> random_rows(std::int64_t rows, std::int64_t hidden, DType dtype,
                                      std::mt19937_64& rng) {
  namespace p = kernels::protocol;
  const auto kind = dtype == DType::fp32 ? p::PayloadKind::fp32 : p::PayloadKind::bf16;
  std::vector<std::uint8_t> bytes(rows * hidden * element_size(dtype));
  std::uniform_real_distribution<float> value(-3.0f, 3.0f);
  for (std::int64_t i = 0; i < rows * hidden; ++i) p::store_element(kind, bytes.data(), i, value(rng));
  return bytes;
}

}  // namespace

TEST_CASE("combine sums the topk weights back and starts from the bias", "[unit]") {
  auto rng = seeded("combine options");
  for (auto [nodes, locals] : {std::pair{1, 3}, std::pair{2, 2}, std::pair{3, 2}}) {
    const DType dtype = nodes == 2 ? DType::fp32 : DType::bf16;
    Scenario scenario = make_scenario(shape_of(nodes, locals, DType::bf16), rng);
    Config config = small_config(rng, scenario.hidden, scenario.num_topk);
    INFO(nodes << "x" << locals << " channels " << config.num_channels());
    ClusterRun run(scenario, config);
    auto sources = expected_sources(scenario);
    auto dispatched = run.dispatch(scenario);
    REQUIRE(check_dispatch(scenario, sources, dispatched, true).empty());

    const int R = scenario.num_ranks();
    const int K = scenario.num_topk;
    auto results = make_results(scenario, sources, dtype, 0, rng);
    std::vector<std::vector<float>> weights(R);
    std::vector<std::vector<std::uint8_t>> bias(R);
    std::uniform_real_distribution<float> value(-2.0f, 2.0f);
    for (int r = 0; r < R; ++r) {
      weights[r].resize(sources[r].size() * K);
      for (float& w : weights[r]) w = value(rng);
      bias[r] = random_rows(scenario.ranks[r].num_tokens, scenario.hidden, dtype, rng);
    }
    std::vector<Pending<CombineResult>> pending;
    for (int r = 0; r < R; ++r) {
      const std::int64_t rows = dispatched[r].handle.recv_rows();
      CombineOptions options;
      options.topk_weights = TensorView(weights[r].data(), {rows, K}, DType::fp32);
      options.bias = TensorView(bias[r].data(), {scenario.ranks[r].num_tokens, scenario.hidden}, dtype);
      pending.push_back(run.buffers[r]->combine(TensorView(results[r].data(), {rows, scenario.hidden}, dtype),
                                                dispatched[r].handle, options));
    }
    auto expected = expected_combine(scenario, sources, results, dtype, &bias);
    auto expected_weights = expected_combined_weights(scenario, sources, weights);
    for (int r = 0; r < R; ++r) {
      CombineResult& got = pending[r].wait();
      INFO("rank " << r);
      REQUIRE(check_combine_rank(scenario, expected[r], r, got.out).empty());
      REQUIRE(got.topk_weights.size(0) == scenario.ranks[r].num_tokens);
      REQUIRE(got.topk_weights.size(1) == K);
      if (!expected_weights[r].empty()) {  // a rank without tokens has no weights (and null data)
        REQUIRE(std::memcmp(got.topk_weights.data(), expected_weights[r].data(),
                            expected_weights[r].size() * 4) == 0);
      }
    }

    // With the dispatch's own received weights, every token gets its topk weights back (0 for empty slots).
    pending.clear();
    for (int r = 0; r < R; ++r) {
      CombineOptions options;
      options.topk_weights = dispatched[r].recv_topk_weights;
      pending.push_back(run.buffers[r]->combine(dispatched[r].recv_x, dispatched[r].handle, options));
    }
    for (int r = 0; r < R; ++r) {
      const RankData& data = scenario.ranks[r];
      const float* got = pending[r].wait().topk_weights.data_as<float>();
      for (std::int64_t i = 0; i < data.num_tokens * K; ++i) {
        const float want = data.topk[i] >= 0 ? data.weights[i] : 0.0f;
        INFO("rank " << r << " token " << i / K << " slot " << i % K);
        REQUIRE(got[i] == want);
      }
    }
  }
}

TEST_CASE("expert_alignment rounds every per-expert count up", "[unit]") {
  auto rng = seeded("expert alignment");
  Scenario scenario = make_scenario(shape_of(2, 2, DType::bf16), rng);
  Config config = small_config(rng, scenario.hidden, scenario.num_topk);
  ClusterRun run(scenario, config);
  auto sources = expected_sources(scenario);
  // Both against the reference: the same rows and ids; the aligned counts are the reference's rounded up.
  auto plain = run.dispatch(scenario);
  REQUIRE(check_dispatch(scenario, sources, plain, true).empty());
  DispatchOptions options;
  options.expert_alignment = 8;
  auto aligned = run.dispatch(scenario, options);
  REQUIRE(check_dispatch(scenario, sources, aligned, true, 0, 8).empty());
  // Not a multiple of 8 already everywhere, or the rounding would go unseen.
  bool rounded = false;
  for (int r = 0; r < scenario.num_ranks(); ++r)
    rounded |= plain[r].tokens_per_local_expert != aligned[r].tokens_per_local_expert;
  CHECK(rounded);
}

TEST_CASE("a per-call Config changes channels and chunks, never the results", "[unit]") {
  auto rng = seeded("per-call config");
  for (auto [nodes, locals] : {std::pair{2, 2}, std::pair{1, 4}, std::pair{3, 1}}) {
    Scenario scenario = make_scenario(shape_of(nodes, locals, DType::bf16), rng);
    Config config = small_config(rng, scenario.hidden, scenario.num_topk);
    config.num_sms = 8;
    INFO(nodes << "x" << locals);
    ClusterRun run(scenario, config);
    auto sources = expected_sources(scenario);
    auto results = make_results(scenario, sources, DType::bf16, 0, rng);
    auto expected = expected_combine(scenario, sources, results, DType::bf16);
    for (int num_sms : {2, 6, 8}) {
      Config call = config;
      call.num_sms = num_sms;
      call.rdma_chunk = std::uniform_int_distribution<int>(1, config.rdma_ring_slots)(rng);
      call.nvl_chunk = std::uniform_int_distribution<int>(1, config.nvl_ring_slots)(rng);
      INFO("num_sms " << num_sms << " chunks " << call.rdma_chunk << "/" << call.nvl_chunk);
      DispatchOptions options;
      options.config = call;
      auto dispatched = run.dispatch(scenario, options);
      REQUIRE(check_dispatch(scenario, sources, dispatched, true).empty());
      // A cached dispatch and the combine run on the dispatch's channels; their chunks may differ again.
      auto again = run.dispatch_cached(scenario, dispatched);
      REQUIRE(check_dispatch(scenario, sources, again, false).empty());
      auto outputs = run.combine(results, scenario.hidden, DType::bf16, dispatched);
      REQUIRE(check_combine(scenario, expected, outputs).empty());
    }
  }
}

TEST_CASE("a worst-case overflow fails that dispatch alone and the Buffer stays usable", "[unit]") {
  auto rng = seeded("overflow");
  // A rank must receive 2 rows or more, so that room for one row less still holds one.
  Scenario scenario = make_scenario_receiving(shape_of(2, 2, DType::bf16), rng, 2);
  Config config = small_config(rng, scenario.hidden, scenario.num_topk);
  ClusterRun run(scenario, config);
  auto sources = expected_sources(scenario);
  std::size_t most = 0;
  for (const auto& rows : sources) most = std::max(most, rows.size());
  REQUIRE(most >= 2);

  DispatchOptions small;
  small.num_worst_tokens = static_cast<std::int64_t>(most) - 1;
  std::vector<Pending<DispatchResult>> pending;
  std::vector<const DispatchResult*> seen(scenario.num_ranks(), nullptr);  // as on_allocated hands them out
  for (int r = 0; r < scenario.num_ranks(); ++r) {
    DispatchInputs inputs = inputs_of(scenario, r);
    DispatchOptions options = small;
    options.on_allocated = [&seen, r](const DispatchResult& result) { seen[r] = &result; };
    pending.push_back(run.buffers[r]->dispatch(
        inputs, run.buffers[r]->get_layout(inputs.topk_idx, scenario.num_experts), options));
  }
  for (int r = 0; r < scenario.num_ranks(); ++r) {
    if (sources[r].size() == most) {
      REQUIRE_THROWS_WITH(pending[r].wait(), Catch::Contains("received " + std::to_string(most)) &&
                                                 Catch::Contains("the Buffer stays usable"));
      // Its handle recorded fewer rows than the counts say: combine and a cached dispatch on it would read
      // past them (on a GPU, an illegal address that loses the context). Both are refused by name, before
      // anything runs, and the Buffer goes on (below).
      REQUIRE(seen[r] != nullptr);
      const Handle& overflowed = seen[r]->handle;
      const Tensor y({small.num_worst_tokens, scenario.hidden}, DType::bf16);
      REQUIRE_THROWS_WITH(run.buffers[r]->combine(y, overflowed),
                          Catch::Contains("received " + std::to_string(most)) &&
                              Catch::Contains("num_worst_tokens was " + std::to_string(most - 1)) &&
                              Catch::Contains("neither combined nor repeated"));
      const DispatchInputs again = inputs_of(scenario, r);
      REQUIRE_THROWS_WITH(run.buffers[r]->dispatch(again.x, again.x_scales, overflowed),
                          Catch::Contains("neither combined nor repeated"));
    } else {
      REQUIRE_NOTHROW(pending[r].wait());
    }
  }
  // Every rank's next operations run normally, and exactly.
  DispatchOptions large;
  large.num_worst_tokens = static_cast<std::int64_t>(most) + 5;
  auto dispatched = run.dispatch(scenario, large);
  REQUIRE(check_dispatch(scenario, sources, dispatched, true, large.num_worst_tokens).empty());

  // A cached dispatch along a worst-case handle pads its outputs with zeros too, whatever memory it reuses.
  scenario.dtype = DType::fp32;
  fill_rows(scenario, rng);
  for (int round = 0; round < 2; ++round) {
    auto again = run.dispatch_cached(scenario, dispatched);
    REQUIRE(check_dispatch(scenario, sources, again, false, large.num_worst_tokens).empty());
  }
  auto results = make_results(scenario, sources, DType::bf16, large.num_worst_tokens, rng);
  auto outputs = run.combine(results, scenario.hidden, DType::bf16, dispatched);
  REQUIRE(
      check_combine(scenario, expected_combine(scenario, sources, results, DType::bf16), outputs).empty());
}

// What the Python binding builds DeepEP's async_finish on: the receive tensors as soon as the counts are
// known (before the rows arrive), and a bounded wait that lets the waiter look at signals between tries.
TEST_CASE("on_allocated hands out the output tensors before the rows, and wait_for is bounded", "[unit]") {
  auto rng = seeded("on_allocated");
  Scenario scenario = make_scenario(shape_of(2, 2, DType::bf16), rng);
  Config config = small_config(rng, scenario.hidden, scenario.num_topk);
  ClusterRun run(scenario, config);
  auto sources = expected_sources(scenario);
  const int R = scenario.num_ranks();

  struct Seen {
    std::mutex mutex;
    int calls = 0;
    std::int64_t rows = -1;
    const void* recv_x = nullptr;
  };
  std::vector<Seen> seen(R);
  auto options_for = [&](int r) {
    DispatchOptions options;
    options.on_allocated = [&seen, r](const DispatchResult& result) {
      std::lock_guard lock(seen[r].mutex);
      ++seen[r].calls;
      seen[r].rows = result.recv_x.size(0);
      seen[r].recv_x = result.recv_x.data();
    };
    return options;
  };
  // The last rank has not issued its dispatch: nobody knows its counts yet, so nothing is allocated or done.
  std::vector<Pending<DispatchResult>> pending;
  for (int r = 0; r + 1 < R; ++r) {
    DispatchInputs inputs = inputs_of(scenario, r);
    pending.push_back(run.buffers[r]->dispatch(
        inputs, run.buffers[r]->get_layout(inputs.topk_idx, scenario.num_experts), options_for(r)));
  }
  const auto start = std::chrono::steady_clock::now();
  const bool finished_early = pending[0].event().wait_for(std::chrono::milliseconds(50));
  const double waited = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK_FALSE(finished_early);
  CHECK(waited >= 0.045);
  CHECK(waited < 5.0);
  {
    std::lock_guard lock(seen[0].mutex);
    CHECK(seen[0].calls == 0);
  }
  DispatchInputs last = inputs_of(scenario, R - 1);
  pending.push_back(run.buffers[R - 1]->dispatch(
      last, run.buffers[R - 1]->get_layout(last.topk_idx, scenario.num_experts), options_for(R - 1)));
  std::vector<DispatchResult> dispatched;
  for (int r = 0; r < R; ++r) {
    REQUIRE(pending[r].event().wait_for(std::chrono::seconds(60)));
    dispatched.push_back(pending[r].wait());
    std::lock_guard lock(seen[r].mutex);
    CHECK(seen[r].calls == 1);
    CHECK(seen[r].rows == dispatched[r].num_recv_tokens);
    CHECK(seen[r].recv_x == dispatched[r].recv_x.data());
  }
  REQUIRE(check_dispatch(scenario, sources, dispatched, true).empty());

  // A cached or worst-case dispatch knows its sizes at the call: the callback has run when dispatch returns.
  for (const bool cached : {true, false}) {
    INFO((cached ? "cached" : "worst case"));
    std::vector<Pending<DispatchResult>> again;
    for (int r = 0; r < R; ++r) {
      seen[r].calls = 0;
      DispatchInputs inputs = inputs_of(scenario, r);
      DispatchOptions options = options_for(r);
      if (cached) {
        again.push_back(run.buffers[r]->dispatch(inputs.x, inputs.x_scales, dispatched[r].handle, options));
      } else {
        options.num_worst_tokens = dispatched[r].num_recv_tokens + 3;
        again.push_back(run.buffers[r]->dispatch(
            inputs, run.buffers[r]->get_layout(inputs.topk_idx, scenario.num_experts), options));
      }
      std::lock_guard lock(seen[r].mutex);
      CHECK(seen[r].calls == 1);
    }
    for (int r = 0; r < R; ++r) {
      const DispatchResult& result = again[r].wait();
      CHECK(seen[r].recv_x == result.recv_x.data());
      CHECK(seen[r].rows == result.recv_x.size(0));
    }
  }

  // Combine's output exists when combine() returns.
  std::vector<Pending<CombineResult>> combined;
  std::vector<const void*> out_memory(R, nullptr);
  for (int r = 0; r < R; ++r) {
    CombineOptions options;
    options.on_allocated = [&out_memory, r](const CombineResult& result) {
      out_memory[r] = result.out.data();
    };
    combined.push_back(run.buffers[r]->combine(dispatched[r].recv_x, dispatched[r].handle, options));
    CHECK(out_memory[r] != nullptr);
  }
  for (int r = 0; r < R; ++r) CHECK(combined[r].wait().out.data() == out_memory[r]);
}

TEST_CASE("Config files round-trip and name what is wrong", "[unit]") {
  const auto dir = std::filesystem::temp_directory_path() / ("ferry-config-" + std::to_string(::getpid()));
  std::filesystem::create_directories(dir);
  Config tuned;
  tuned.num_sms = 12;
  tuned.rdma_chunk = 8;
  tuned.nvl_chunk = 4;
  tuned.timeout = std::chrono::milliseconds(2500);
  tuned.host_thread_per_role = true;
  const std::string path = (dir / "tuned.json").string();
  tuned.save(path);
  Config loaded = Config::load(path);
  CHECK(loaded.to_json() == tuned.to_json());
  CHECK(loaded.num_sms == 12);
  CHECK(loaded.timeout == std::chrono::milliseconds(2500));
  CHECK(loaded.host_thread_per_role);

  CHECK(Config::from_json("{}").to_json() == Config{}.to_json());
  REQUIRE_THROWS_WITH(Config::from_json(R"({"num_sm": 4})"), Catch::Contains("unknown key \"num_sm\""));
  REQUIRE_THROWS_WITH(Config::from_json(R"({"num_sms": "20"})"),
                      Catch::Contains("\"num_sms\" must be an integer"));
  REQUIRE_THROWS_WITH(Config::from_json(R"({"buffer_bytes": -1})"), Catch::Contains("\"buffer_bytes\""));
  REQUIRE_THROWS_WITH(Config::from_json(R"({"max_hidden": 1e12})"), Catch::Contains("\"max_hidden\""));
  REQUIRE_THROWS_WITH(Config::from_json(R"({"num_sms": 99999999999})"), Catch::Contains("\"num_sms\""));
  REQUIRE_THROWS_WITH(Config::from_json(R"({"timeout_s": 0})"),
                      Catch::Contains("\"timeout_s\" must be a positive"));
  REQUIRE_THROWS_WITH(Config::from_json("[1, 2]"), Catch::Contains("must be an object"));
  REQUIRE_THROWS_WITH(Config::from_json("{"), Catch::Contains("does not parse"));
  REQUIRE_THROWS_WITH(Config::load((dir / "missing.json").string()),
                      Catch::Contains("cannot read the Config file"));
  {
    std::ofstream bad(dir / "bad.json");
    bad << R"({"nvl_chunk": true})";
  }
  REQUIRE_THROWS_WITH(Config::load((dir / "bad.json").string()),
                      Catch::Contains("bad.json") && Catch::Contains("\"nvl_chunk\" must be an integer"));
  std::filesystem::remove_all(dir);
}

TEST_CASE("ranks whose Buffers would disagree are refused when they are built", "[unit]") {
  std::vector<std::string> errors(2);
  try {
    run_ranks(2, 1, unique_job_id("config-mismatch"), [&](Group& group) {
      Config config;
      config.max_hidden = 64;
      config.num_sms = 2;
      config.nvl_chunk = group.rank() == 1 ? 4 : 8;
      try {
        Buffer buffer(group, config);
      } catch (const Error& error) {
        errors[group.rank()] = error.what();
      }
    });
  } catch (const std::exception&) {
  }
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r << ": " << errors[r]);
    CHECK(errors[r].find("ranks build their Buffers differently") != std::string::npos);
    CHECK(errors[r].find("Config::nvl_chunk") != std::string::npos);
  }
}
