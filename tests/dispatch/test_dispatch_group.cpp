// The Buffer of a multi-process job (Group: shm peer memory, a proxy and a fabric), with ranks run as threads
// of this process, against the same reference as the in-process clusters: over the real fabric (ucx here),
// and over the inproc fabric, whose bytes ThreadSanitizer sees, so that the handoff from a channel worker
// through the proxy to the reader on another node is race-checked (the tsan preset runs it).
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <mutex>
#include <optional>
#include <thread>

#include "../peer/rank_threads.hpp"
#include "cluster_run.hpp"
#include "common/scoped_env.hpp"
#include "ferry/buffer.hpp"

using namespace ferry;
using namespace ferry::test;
using namespace std::chrono_literals;

namespace {

// `rounds` of dispatch then combine on one Group-backed Buffer per rank (new rows each round on the same
// routing, so rings are reused and credits cycle); every result against the reference, the paths counted.
void group_round_trips(const char* name, const ScenarioShape& shape, int rounds) {
  std::mt19937_64 rng = seeded(name);
  std::vector<Scenario> scenarios{make_scenario(shape, rng)};
  for (int round = 1; round < rounds; ++round) {
    scenarios.push_back(scenarios.front());
    fill_rows(scenarios.back(), rng);
  }
  const Scenario& first = scenarios.front();
  const auto sources = expected_sources(first);
  std::vector<std::vector<std::vector<std::uint8_t>>> results;
  for (const Scenario& scenario : scenarios)
    results.push_back(make_results(scenario, sources, DType::bf16, 0, rng));
  Config config = small_config(rng, shape.hidden, shape.num_topk);
  config.host_workers = 2;
  INFO("channels " << config.num_channels() << " rdma " << config.rdma_ring_slots << "/" << config.rdma_chunk
                   << " nvl " << config.nvl_ring_slots << "/" << config.nvl_chunk);

  const int R = first.num_ranks();
  std::vector<std::vector<DispatchResult>> dispatched(rounds, std::vector<DispatchResult>(R));
  std::vector<std::vector<Tensor>> combined(rounds, std::vector<Tensor>(R));
  std::vector<BufferTraffic> traffic(R);
  run_ranks(
      R, shape.local_size, unique_job_id(name),
      [&](Group& group) {
        Buffer buffer(group, config);
        const int rank = group.rank();
        for (int round = 0; round < rounds; ++round) {
          DispatchInputs inputs = inputs_of(scenarios[round], rank);
          DispatchResult got = std::move(
              buffer.dispatch(inputs, buffer.get_layout(inputs.topk_idx, first.num_experts)).wait());
          TensorView y(results[round][rank].data(), {got.handle.recv_rows(), first.hidden}, DType::bf16);
          combined[round][rank] = std::move(buffer.combine(y, got.handle).wait().out);
          dispatched[round][rank] = std::move(got);
        }
        traffic[rank] = buffer.traffic();
      },
      60s);

  for (int round = 0; round < rounds; ++round) {
    INFO("round " << round);
    const Scenario& scenario = scenarios[round];
    std::string diff = check_dispatch(scenario, sources, dispatched[round], true);
    INFO(diff);
    REQUIRE(diff.empty());
    diff = check_combine(scenario, expected_combine(scenario, sources, results[round], DType::bf16),
                         combined[round]);
    REQUIRE(diff.empty());
  }
  ExpectedTraffic expected = expected_traffic(first);
  REQUIRE(expected.fabric > 0);  // tokens crossed the nodes: the fabric had work
  std::uint64_t fabric = 0, within = 0;
  for (const BufferTraffic& one : traffic) {
    fabric += one.dispatch.fabric.messages;
    within += one.dispatch.node.messages + one.dispatch.self.messages;
  }
  CHECK(fabric == expected.fabric * rounds);
  CHECK(within == expected.within_node * rounds);
}

}  // namespace

TEST_CASE("a Group-backed Buffer runs dispatch and combine over shm and the fabric", "[unit]") {
  group_round_trips("group", two_node_shape(2), 1);
}

// Every put and signal the proxy makes is a memcpy and an atomic of this process: under TSan, a slot a
// channel worker fills after posting its command, or reads before its signal, is reported.
TEST_CASE("a Group-backed Buffer across 2 nodes over the inproc fabric: the proxy handoff, race-checked",
          "[unit]") {
  ScopedEnv fabric("FERRY_FABRIC", "inproc");
  group_round_trips("group inproc", two_node_shape(2), 2);
}

// Destruction is collective: a rank's ~Buffer waits until every rank has begun destroying its own (so no rank
// releases memory a peer still writes into), and first finishes the operations that rank issued.
TEST_CASE("destroying a Group-backed Buffer finishes what was issued and waits for every rank", "[unit]") {
  ScopedEnv fabric("FERRY_FABRIC", "inproc");
  std::mt19937_64 rng = seeded("group lifetime");
  const ScenarioShape shape = two_node_shape(1);
  const Scenario scenario = make_scenario(shape, rng);
  const auto sources = expected_sources(scenario);
  Config config = small_config(rng, shape.hidden, shape.num_topk);
  using Clock = std::chrono::steady_clock;
  const int R = scenario.num_ranks();
  std::vector<Clock::time_point> entered(R), left(R);
  std::vector<char> finished_when_destroyed(R, 0);  // not vector<bool>: ranks write their own element
  std::vector<DispatchResult> dispatched(R);
  run_ranks(
      R, shape.local_size, unique_job_id("group-lifetime"),
      [&](Group& group) {
        const int rank = group.rank();
        std::optional<Pending<DispatchResult>> pending;
        {
          Buffer buffer(group, config);
          DispatchInputs inputs = inputs_of(scenario, rank);
          pending.emplace(buffer.dispatch(inputs, buffer.get_layout(inputs.topk_idx, scenario.num_experts)));
          // The last rank comes late to the destruction: the others must wait for it.
          if (rank == R - 1) std::this_thread::sleep_for(200ms);
          entered[rank] = Clock::now();
        }
        left[rank] = Clock::now();
        finished_when_destroyed[rank] = pending->test();
        dispatched[rank] = std::move(pending->wait());
      },
      60s);
  for (int r = 0; r < R; ++r) {
    INFO("rank " << r);
    CHECK(finished_when_destroyed[r]);
    for (int other = 0; other < R; ++other) CHECK(left[r] >= entered[other]);
  }
  REQUIRE(check_dispatch(scenario, sources, dispatched, true).empty());
}
