// Soak: thousands of random small dispatch + combine rounds on one in-process cluster (LocalCluster, 2 nodes
// x 2 ranks), every result checked exactly, with the process's resident memory and open descriptors the
// same at the end as after the warm-up: nothing accumulates per round.
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <random>

#include "../dispatch/cluster_run.hpp"
#include "../dispatch/reference.hpp"
#include "../runtime/group_split_exercise.hpp"
#include "process_usage.hpp"

using namespace ferry;
using namespace ferry::test;

namespace {

// One random round: dispatch (sometimes sized for the worst case), sometimes a cached dispatch, combine;
// "" or the first difference.
std::string soak_round(ClusterRun& run, std::mt19937_64& rng) {
  ScenarioShape shape;
  shape.num_nodes = 2;
  shape.local_size = 2;
  shape.experts_per_rank = 2;
  shape.num_topk = 1 + static_cast<int>(rng() % 4);
  shape.hidden = 1 + static_cast<std::int64_t>(rng() % 64);
  shape.dtype = rng() % 2 ? DType::bf16 : DType::fp32;
  shape.max_tokens = 16;
  shape.max_nodes = 2;
  shape.style = static_cast<RoutingStyle>(rng() % 3);
  Scenario scenario = make_scenario(shape, rng);
  auto sources = expected_sources(scenario);
  DispatchOptions options;
  if (rng() % 4 == 0) options.num_worst_tokens = 4 * shape.max_tokens;
  auto dispatched = run.dispatch(scenario, options);
  std::string diff = check_dispatch(scenario, sources, dispatched, true, options.num_worst_tokens);
  if (!diff.empty()) return "dispatch: " + diff;
  if (rng() % 4 == 0 && options.num_worst_tokens == 0) {
    fill_rows(scenario, rng);
    diff = check_dispatch(scenario, sources, run.dispatch_cached(scenario, dispatched), false);
    if (!diff.empty()) return "cached dispatch: " + diff;
  }
  const DType result_type = rng() % 2 ? DType::bf16 : DType::fp32;
  auto results = make_results(scenario, sources, result_type, options.num_worst_tokens, rng);
  auto outputs = run.combine(results, scenario.hidden, result_type, dispatched);
  diff = check_combine(scenario, expected_combine(scenario, sources, results, result_type), outputs);
  return diff.empty() ? "" : "combine: " + diff;
}

}  // namespace

TEST_CASE("soak: thousands of random dispatch/combine rounds keep memory and descriptors flat", "[soak]") {
  const std::uint64_t seed = test_seed();
  std::printf("soak: seed %llu (set FERRY_TEST_SEED to repeat)\n", static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  std::mt19937_64 rng(seed);
  // Fewer rounds under the sanitizers, which run everything several times slower; FERRY_SOAK_ROUNDS for a
  // long soak by hand.
  const int warmup = kSanitized ? 50 : 200;
  const int rounds = soak_rounds(kSanitized ? 500 : 5000);

  Scenario shape_only;
  shape_only.num_nodes = 2;
  shape_only.local_size = 2;
  ClusterRun run(shape_only, split_test_config(2));
  for (int round = 0; round < warmup; ++round) {
    std::string diff = soak_round(run, rng);
    INFO("warm-up round " << round);
    REQUIRE(diff.empty());
  }
  const ProcessUsage before = process_usage();
  const auto start = std::chrono::steady_clock::now();
  for (int round = 0; round < rounds; ++round) {
    std::string diff = soak_round(run, rng);
    INFO("round " << round << ": " << diff);
    REQUIRE(diff.empty());
  }
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  const ProcessUsage after = process_usage();
  std::printf("soak: %d rounds (after %d warm-up) on LocalCluster 2x2 in %.1f s; before: %s; after: %s\n",
              rounds, warmup, seconds, before.describe().c_str(), after.describe().c_str());
  CHECK(after.open_fds == before.open_fds);
  if (!kSanitized) CHECK(after.rss_kib - before.rss_kib < 4096);
}
