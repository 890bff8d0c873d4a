// Dispatch and combine on in-process clusters against the reference, exactly: every received row, every topk
// slot, every combined row; plus the traffic rules (a token crosses the fabric once per remote target node,
// own- node tokens never do, fabric puts go only to rail partners).
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstring>

#include "cluster_run.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/protocol/numeric.hpp"
#include "reference.hpp"

using namespace ferry;
using namespace ferry::test;

namespace {

template <typename T>
T pick(std::mt19937_64& rng, std::initializer_list<T> values) {
  return *(values.begin() + std::uniform_int_distribution<std::size_t>(0, values.size() - 1)(rng));
}

std::string describe(const Scenario& s, const Config& c) {
  return std::to_string(s.num_nodes) + "x" + std::to_string(s.local_size) +
         " E=" + std::to_string(s.num_experts) + " K=" + std::to_string(s.num_topk) +
         " H=" + std::to_string(s.hidden) + " " + to_string(s.dtype) +
         " channels=" + std::to_string(c.num_channels()) +
         (c.host_thread_per_role ? " thread-per-role" : "") +
         (c.host_lanes > 1 ? " lanes=" + std::to_string(c.host_lanes) : "") + " rdma " +
         std::to_string(c.rdma_ring_slots) + "/" + std::to_string(c.rdma_chunk) + " nvl " +
         std::to_string(c.nvl_ring_slots) + "/" + std::to_string(c.nvl_chunk) +
         " workers=" + std::to_string(c.host_workers) + " max_nodes=" + std::to_string(c.max_nodes);
}

// Dispatch, check, combine, check, and the traffic rules, on a fresh cluster.
void round_trip(const Scenario& scenario, const Config& config, std::mt19937_64& rng) {
  INFO(describe(scenario, config));
  ClusterRun run(scenario, config);
  auto sources = expected_sources(scenario);
  auto dispatched = run.dispatch(scenario);
  std::string diff = check_dispatch(scenario, sources, dispatched, true);
  INFO(diff);
  REQUIRE(diff.empty());

  ExpectedTraffic expected = expected_traffic(scenario);
  TrafficCounters dispatch = run.total(&BufferTraffic::dispatch);
  CHECK(dispatch.fabric.messages == expected.fabric);
  CHECK(dispatch.node.messages + dispatch.self.messages == expected.within_node);
  if (scenario.num_nodes == 1) CHECK(dispatch.fabric.bytes == 0);

  DType result_type = pick(rng, {DType::bf16, DType::fp32});
  auto results = make_results(scenario, sources, result_type, 0, rng);
  auto outputs = run.combine(results, scenario.hidden, result_type, dispatched);
  diff = check_combine(scenario, expected_combine(scenario, sources, results, result_type), outputs);
  INFO("combine as " << to_string(result_type) << ": " << diff);
  REQUIRE(diff.empty());

  TrafficCounters combine = run.total(&BufferTraffic::combine);
  CHECK(combine.fabric.messages == expected.fabric);
  CHECK(combine.node.messages + combine.self.messages == expected.within_node);
  diff = check_rail_only(run, scenario);
  REQUIRE(diff.empty());
}

ScenarioShape random_shape(std::mt19937_64& rng, int nodes, int locals) {
  ScenarioShape shape;
  shape.num_nodes = nodes;
  shape.local_size = locals;
  shape.experts_per_rank = pick(rng, {1, 2, 3});
  int experts = shape.experts_per_rank * nodes * locals;
  shape.num_topk = std::uniform_int_distribution<int>(1, std::min(8, experts))(rng);
  shape.hidden = pick<std::int64_t>(rng, {1, 7, 64, 100, 128, 200, 257});
  shape.dtype = pick(rng, {DType::bf16, DType::fp32});
  shape.max_tokens = 24;
  shape.max_nodes = std::uniform_int_distribution<int>(1, std::min(nodes, 4))(rng);
  shape.style = pick(rng, {RoutingStyle::random, RoutingStyle::skewed, RoutingStyle::sparse});
  return shape;
}

Config config_for(std::mt19937_64& rng, const ScenarioShape& shape) {
  Config config = small_config(rng, shape.hidden, shape.num_topk);
  config.max_nodes = shape.max_nodes;
  return config;
}

}  // namespace

TEST_CASE("dispatch and combine match the reference on every topology", "[unit]") {
  auto rng = seeded("topologies");
  const std::pair<int, int> topologies[] = {{1, 1}, {1, 4}, {2, 2}, {3, 3}, {4, 4}, {2, 3},
                                            {3, 2}, {4, 1}, {1, 8}, {5, 1}, {8, 1}, {8, 2}};
  for (auto [nodes, locals] : topologies) {
    for (int repeat = 0; repeat < 2; ++repeat) {
      ScenarioShape shape = random_shape(rng, nodes, locals);
      Scenario scenario = make_scenario(shape, rng);
      round_trip(scenario, config_for(rng, shape), rng);
    }
  }
}

// On a GPU the roles of a channel run at once on different warps; here every role gets a thread of its own,
// so orderings that only concurrent roles produce (a receiver draining while its forwarder fills, credits
// returned while a sender publishes) are exercised too, on every topology, and under ThreadSanitizer in CI.
TEST_CASE("every role on a thread of its own, as warps run on a GPU, on every topology", "[unit]") {
  auto rng = seeded("thread per role");
  const std::pair<int, int> topologies[] = {{1, 1}, {1, 4}, {2, 2}, {3, 3}, {4, 4}, {2, 3},
                                            {3, 2}, {4, 1}, {1, 8}, {5, 1}, {8, 1}, {8, 2}};
  for (auto [nodes, locals] : topologies) {
    ScenarioShape shape = random_shape(rng, nodes, locals);
    shape.max_tokens = 16;
    Scenario scenario = make_scenario(shape, rng);
    Config config = config_for(rng, shape);
    config.num_sms = std::min(config.num_sms, 4);
    config.host_thread_per_role = true;
    round_trip(scenario, config, rng);
  }
}

// The GPU's execution model on the CPU: every role instance run by a group of threads sharing its state, the
// splittable roles in two groups each, all through the same role loop the kernels run. A role whose threads
// could take different branches, or read state before its leader committed it, fails here (and under TSan).
TEST_CASE("every role run by a group of lanes, as warp groups run it on a GPU, on every topology", "[unit]") {
  auto rng = seeded("lanes");
  const std::pair<int, int> topologies[] = {{1, 1}, {1, 4}, {2, 2}, {3, 2}, {2, 3}, {4, 1}, {1, 8}};
  for (auto [nodes, locals] : topologies) {
    ScenarioShape shape = random_shape(rng, nodes, locals);
    shape.max_tokens = 12;
    Scenario scenario = make_scenario(shape, rng);
    Config config = config_for(rng, shape);
    config.num_sms = 2;
    config.host_lanes = nodes * locals > 4 ? 2 : 3;
    round_trip(scenario, config, rng);
  }
}

TEST_CASE("fp8 rows and their scales arrive exactly", "[unit]") {
  auto rng = seeded("fp8");
  for (std::int64_t hidden : {128, 256, 300}) {
    ScenarioShape shape = random_shape(rng, 2, 2);
    shape.dtype = DType::fp8_e4m3;
    shape.hidden = hidden;
    Scenario scenario = make_scenario(shape, rng);
    Config config = config_for(rng, shape);
    INFO(describe(scenario, config));
    ClusterRun run(scenario, config);
    auto sources = expected_sources(scenario);
    auto dispatched = run.dispatch(scenario);
    std::string diff = check_dispatch(scenario, sources, dispatched, true);
    INFO(diff);
    REQUIRE(diff.empty());
    // Dequantized, every received value equals the sender's.
    std::int64_t blocks = scenario.scale_blocks();
    for (int r = 0; r < scenario.num_ranks(); ++r) {
      for (std::size_t i = 0; i < sources[r].size(); ++i) {
        const RankData& data = scenario.ranks[sources[r][i].rank];
        std::int64_t t = sources[r][i].token;
        for (std::int64_t h = 0; h < hidden; ++h) {
          auto got_code = static_cast<const std::uint8_t*>(dispatched[r].recv_x.data())[i * hidden + h];
          float got = kernels::protocol::e4m3_to_float(got_code) *
                      dispatched[r].recv_x_scales.data_as<float>()[i * blocks + h / 128];
          float want =
              kernels::protocol::e4m3_to_float(data.x[t * hidden + h]) * data.scales[t * blocks + h / 128];
          REQUIRE(std::memcmp(&got, &want, sizeof(float)) == 0);
        }
      }
    }
  }
}

TEST_CASE("rings of one slot carry many tokens under credit", "[unit]") {
  auto rng = seeded("tiny rings");
  for (auto [nodes, locals] : {std::pair{2, 2}, std::pair{3, 2}, std::pair{2, 4}}) {
    ScenarioShape shape = random_shape(rng, nodes, locals);
    shape.max_tokens = 160;
    shape.hidden = 40;
    Scenario scenario = make_scenario(shape, rng);
    Config config = config_for(rng, shape);
    config.rdma_ring_slots = 1;
    config.rdma_chunk = 1;
    config.nvl_ring_slots = 1;
    config.nvl_chunk = 1;
    round_trip(scenario, config, rng);
  }
}

TEST_CASE("skewed, sparse and empty loads", "[unit]") {
  auto rng = seeded("loads");
  SECTION("most tokens on rank 0") {
    ScenarioShape shape = random_shape(rng, 2, 3);
    shape.style = RoutingStyle::skewed;
    shape.max_tokens = 60;
    round_trip(make_scenario(shape, rng), config_for(rng, shape), rng);
  }
  SECTION("mostly empty slots") {
    ScenarioShape shape = random_shape(rng, 3, 2);
    shape.style = RoutingStyle::sparse;
    round_trip(make_scenario(shape, rng), config_for(rng, shape), rng);
  }
  SECTION("ranks without tokens and tokens without experts") {
    ScenarioShape shape = random_shape(rng, 2, 2);
    Scenario scenario = make_scenario(shape, rng);
    for (int r : {0, 3}) {
      scenario.ranks[r] = RankData{};
    }
    std::fill(scenario.ranks[1].topk.begin(), scenario.ranks[1].topk.end(), -1);
    round_trip(scenario, config_for(rng, shape), rng);
  }
  SECTION("nobody sends anything") {
    ScenarioShape shape = random_shape(rng, 2, 2);
    shape.max_tokens = 0;
    round_trip(make_scenario(shape, rng), config_for(rng, shape), rng);
  }
}

TEST_CASE("every token to every node crosses the fabric once per remote node", "[unit]") {
  auto rng = seeded("all nodes");
  ScenarioShape shape;
  shape.num_nodes = 3;
  shape.local_size = 2;
  shape.experts_per_rank = 1;
  shape.num_topk = 6;
  shape.hidden = 16;
  shape.max_nodes = 3;
  Scenario scenario = make_scenario(shape, rng);
  for (RankData& data : scenario.ranks) {
    for (std::int64_t t = 0; t < data.num_tokens; ++t) {
      for (int k = 0; k < 6; ++k) data.topk[t * 6 + k] = k;  // every expert: every rank, every node
    }
  }
  Config config = config_for(rng, shape);
  ClusterRun run(scenario, config);
  auto dispatched = run.dispatch(scenario);
  REQUIRE(check_dispatch(scenario, expected_sources(scenario), dispatched, true).empty());
  for (int r = 0; r < scenario.num_ranks(); ++r) {
    TrafficCounters mine = run.buffers[r]->traffic().dispatch;
    CHECK(mine.fabric.messages == static_cast<std::uint64_t>(scenario.ranks[r].num_tokens * 2));
  }
  CHECK(check_rail_only(run, scenario).empty());
}

TEST_CASE("cached dispatch repeats the routing with new rows", "[unit]") {
  auto rng = seeded("cached");
  for (auto [nodes, locals] : {std::pair{2, 2}, std::pair{3, 1}, std::pair{1, 3}}) {
    ScenarioShape shape = random_shape(rng, nodes, locals);
    Scenario scenario = make_scenario(shape, rng);
    Config config = config_for(rng, shape);
    INFO(describe(scenario, config));
    ClusterRun run(scenario, config);
    auto sources = expected_sources(scenario);
    auto first = run.dispatch(scenario);
    REQUIRE(check_dispatch(scenario, sources, first, true).empty());
    TrafficCounters notify_before = run.total(&BufferTraffic::notify);

    scenario.dtype = pick(rng, {DType::bf16, DType::fp32});  // new rows, maybe of another type
    fill_rows(scenario, rng);
    auto again = run.dispatch_cached(scenario, first);
    std::string diff = check_dispatch(scenario, sources, again, false);
    INFO(diff);
    REQUIRE(diff.empty());
    CHECK(run.total(&BufferTraffic::notify).self.messages ==
          notify_before.self.messages);  // no counts exchanged

    auto results = make_results(scenario, sources, DType::bf16, 0, rng);
    auto outputs = run.combine(results, scenario.hidden, DType::bf16, again);
    REQUIRE(
        check_combine(scenario, expected_combine(scenario, sources, results, DType::bf16), outputs).empty());
  }
}

TEST_CASE("worst-case sizing pads the outputs and needs no counts up front", "[unit]") {
  auto rng = seeded("worst case");
  ScenarioShape shape = random_shape(rng, 2, 2);
  // "too small" needs a rank that receives 2 rows or more, so that room for one row less still holds one.
  Scenario scenario = make_scenario_receiving(shape, rng, 2);
  Config config = config_for(rng, shape);
  INFO(describe(scenario, config));
  auto sources = expected_sources(scenario);
  std::int64_t worst = 0;
  for (const RankData& data : scenario.ranks) worst += data.num_tokens;

  SECTION("large enough") {
    ClusterRun run(scenario, config);
    DispatchOptions options;
    options.num_worst_tokens = worst + 3;
    auto dispatched = run.dispatch(scenario, options);
    std::string diff = check_dispatch(scenario, sources, dispatched, true, worst + 3);
    INFO(diff);
    REQUIRE(diff.empty());
    auto results = make_results(scenario, sources, DType::fp32, worst + 3, rng);
    auto outputs = run.combine(results, scenario.hidden, DType::fp32, dispatched);
    REQUIRE(
        check_combine(scenario, expected_combine(scenario, sources, results, DType::fp32), outputs).empty());
  }
  SECTION("too small: the overflowing rank says by how much") {
    std::size_t most = 0;
    for (const auto& rows : sources) most = std::max(most, rows.size());
    REQUIRE(most >= 2);
    ClusterRun run(scenario, config);
    std::vector<Pending<DispatchResult>> pending;
    for (int r = 0; r < scenario.num_ranks(); ++r) {
      DispatchInputs inputs = inputs_of(scenario, r);
      DispatchOptions options;
      options.num_worst_tokens = static_cast<std::int64_t>(most) - 1;
      pending.push_back(run.buffers[r]->dispatch(
          inputs, run.buffers[r]->get_layout(inputs.topk_idx, scenario.num_experts), options));
    }
    for (int r = 0; r < scenario.num_ranks(); ++r) {
      if (sources[r].size() == most) {
        REQUIRE_THROWS_WITH(pending[r].wait(),
                            Catch::Contains("received " + std::to_string(most)) &&
                                Catch::Contains("num_worst_tokens is " + std::to_string(most - 1)));
      } else {
        REQUIRE_NOTHROW(pending[r].wait());
      }
    }
  }
}

TEST_CASE("operations follow one another on the same buffers", "[unit]") {
  auto rng = seeded("sequence");
  ScenarioShape shape = random_shape(rng, 2, 3);
  shape.hidden = 96;
  Config config = config_for(rng, shape);
  config.max_hidden = 128;
  config.max_topk = 8;
  Scenario first = make_scenario(shape, rng);
  ClusterRun run(first, config);
  for (int round = 0; round < 4; ++round) {
    shape.hidden = pick<std::int64_t>(rng, {5, 96, 128});
    shape.dtype = pick(rng, {DType::bf16, DType::fp32, DType::fp8_e4m3});
    const int experts = shape.experts_per_rank * shape.num_nodes * shape.local_size;
    shape.num_topk = std::uniform_int_distribution<int>(1, std::min(8, experts))(rng);
    shape.style = pick(rng, {RoutingStyle::random, RoutingStyle::skewed, RoutingStyle::sparse});
    Scenario scenario = make_scenario(shape, rng);
    INFO("round " << round << ": " << describe(scenario, config));
    auto sources = expected_sources(scenario);
    auto dispatched = run.dispatch(scenario);
    REQUIRE(check_dispatch(scenario, sources, dispatched, true).empty());
    auto results = make_results(scenario, sources, DType::bf16, 0, rng);
    auto outputs = run.combine(results, scenario.hidden, DType::bf16, dispatched);
    REQUIRE(
        check_combine(scenario, expected_combine(scenario, sources, results, DType::bf16), outputs).empty());
    // A second combine of the same dispatch, before the next dispatch.
    results = make_results(scenario, sources, DType::fp32, 0, rng);
    outputs = run.combine(results, scenario.hidden, DType::fp32, dispatched);
    REQUIRE(
        check_combine(scenario, expected_combine(scenario, sources, results, DType::fp32), outputs).empty());
  }
}

TEST_CASE("results do not depend on channels, rings or workers", "[unit]") {
  auto rng = seeded("determinism");
  ScenarioShape shape = random_shape(rng, 2, 2);
  shape.dtype = DType::bf16;
  shape.max_tokens = 40;
  Scenario scenario = make_scenario(shape, rng);
  auto sources = expected_sources(scenario);
  auto results = make_results(scenario, sources, DType::bf16, 0, rng);
  std::vector<std::vector<std::uint8_t>> first_x, first_out;
  for (int attempt = 0; attempt < 3; ++attempt) {
    Config config = config_for(rng, shape);
    INFO(describe(scenario, config));
    ClusterRun run(scenario, config);
    auto dispatched = run.dispatch(scenario);
    auto outputs = run.combine(results, scenario.hidden, DType::bf16, dispatched);
    for (int r = 0; r < scenario.num_ranks(); ++r) {
      auto* x = static_cast<const std::uint8_t*>(dispatched[r].recv_x.data());
      auto* out = static_cast<const std::uint8_t*>(outputs[r].data());
      std::vector<std::uint8_t> x_bytes(x, x + dispatched[r].recv_x.bytes());
      std::vector<std::uint8_t> out_bytes(out, out + outputs[r].bytes());
      if (attempt == 0) {
        first_x.push_back(x_bytes);
        first_out.push_back(out_bytes);
      } else {
        REQUIRE(x_bytes == first_x[r]);
        REQUIRE(out_bytes == first_out[r]);
      }
    }
  }
}
