// The reference for dispatch and combine: what every rank must receive and what combine must return, computed
// directly from all ranks' inputs with the documented order and rounding (rows by (source rank, source
// token); combine sums in fp32, local ranks ascending at the forwarder rounded to the row type, then nodes
// ascending).
#pragma once

#include <cstddef>
#include <cstdint>
#include <random>
#include <vector>

#include "common/seed.hpp"  // test_seed(): FERRY_TEST_SEED or random
#include "ferry/tensor.hpp"

namespace ferry::test {

struct RankData {
  std::int64_t num_tokens = 0;
  std::vector<std::uint8_t> x;     // [T, H] raw elements of the scenario's dtype
  std::vector<float> scales;       // [T, ceil(H/128)] when fp8
  std::vector<std::int64_t> topk;  // [T, K]
  std::vector<float> weights;      // [T, K]
};

struct Scenario {
  int num_nodes = 1;
  int local_size = 1;
  std::int64_t num_experts = 1;
  int num_topk = 1;
  std::int64_t hidden = 1;
  DType dtype = DType::bf16;
  std::vector<RankData> ranks;

  int num_ranks() const { return num_nodes * local_size; }
  std::int64_t experts_per_rank() const { return num_experts / num_ranks(); }
  int rank_of_expert(std::int64_t expert) const { return static_cast<int>(expert / experts_per_rank()); }
  std::size_t row_bytes() const { return static_cast<std::size_t>(hidden) * element_size(dtype); }
  std::int64_t scale_blocks() const { return (hidden + 127) / 128; }
  bool token_in_rank(int source, std::int64_t token, int rank) const;
  std::uint64_t token_nodes(int source, std::int64_t token) const;
};

enum class RoutingStyle {
  random,  // node-limited random routing, a few empty slots
  skewed,  // most tokens prefer the experts of rank 0
  sparse,  // most slots empty, some tokens go nowhere
};

struct ScenarioShape {
  int num_nodes = 1;
  int local_size = 1;
  int experts_per_rank = 2;
  int num_topk = 4;
  std::int64_t hidden = 64;
  DType dtype = DType::bf16;
  std::int64_t max_tokens = 32;  // per rank; each rank draws [0, max_tokens]
  int max_nodes = 4;
  RoutingStyle style = RoutingStyle::random;
};

// 2 nodes x `local_size` ranks, 2 experts per rank, top-4 over both nodes, up to 40 tokens of 96 values: a
// small scenario for tests of how a Buffer behaves rather than of routing.
ScenarioShape two_node_shape(int local_size);

Scenario make_scenario(const ScenarioShape& shape, std::mt19937_64& rng);
// A scenario of `shape` in which some rank receives at least `rows` rows, for a test that needs one (an
// overflow needs a rank with rows to overflow): drawn again from the same stream until one does, so
// FERRY_TEST_SEED still repeats it; throws after 100 draws rather than let the test pass without its case.
Scenario make_scenario_receiving(const ScenarioShape& shape, std::mt19937_64& rng, std::size_t rows);
void fill_rows(Scenario& scenario, std::mt19937_64& rng);  // new x (and scales) for the same routing

// (source rank, source token) of every row rank r receives, in order.
struct Source {
  int rank;
  std::int64_t token;
};
std::vector<std::vector<Source>> expected_sources(const Scenario& scenario);

// Random result rows for every rank's received rows, [received, H] of `dtype` (bf16 or fp32).
std::vector<std::vector<std::uint8_t>> make_results(const Scenario& scenario,
                                                    const std::vector<std::vector<Source>>& sources,
                                                    DType dtype, std::int64_t rows_per_rank_min,
                                                    std::mt19937_64& rng);

// What combine must return on each source rank: [T, H] of `dtype`. With `bias` ([T, H] of `dtype` per source
// rank) the sum starts from the bias instead of 0.
std::vector<std::vector<std::uint8_t>> expected_combine(
    const Scenario& scenario, const std::vector<std::vector<Source>>& sources,
    const std::vector<std::vector<std::uint8_t>>& results, DType dtype,
    const std::vector<std::vector<std::uint8_t>>* bias = nullptr);

// What combine returns as topk weights on each source rank ([T, K]) when every receiving rank passes
// `weights`
// ([received, K] fp32): per node the rows of its ranks in ascending order, then the nodes in ascending order.
std::vector<std::vector<float>> expected_combined_weights(const Scenario& scenario,
                                                          const std::vector<std::vector<Source>>& sources,
                                                          const std::vector<std::vector<float>>& weights);

// Messages each path must carry, summed over all ranks, for one dispatch or one combine.
struct ExpectedTraffic {
  std::uint64_t fabric = 0;       // one per token and remote target node
  std::uint64_t within_node = 0;  // node + self: one per (token, target rank)
};
ExpectedTraffic expected_traffic(const Scenario& scenario);

}  // namespace ferry::test
