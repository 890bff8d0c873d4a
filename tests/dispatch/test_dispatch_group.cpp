// The Buffer of a multi-process job (Group: shm peer memory, a proxy and a real fabric), with ranks run as
// threads of this process, against the same reference as the in-process clusters.
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <mutex>

#include "../peer/rank_threads.hpp"
#include "cluster_run.hpp"
#include "ferry/buffer.hpp"

using namespace ferry;
using namespace ferry::test;
using namespace std::chrono_literals;

namespace {}  // namespace

TEST_CASE("a Group-backed Buffer runs dispatch and combine over shm and the fabric", "[unit]") {
  std::uint64_t seed = test_seed();
  std::printf("group: seed %llu (set FERRY_TEST_SEED to repeat)\n", static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  std::mt19937_64 rng(seed);
  ScenarioShape shape;
  shape.num_nodes = 2;
  shape.local_size = 2;
  shape.experts_per_rank = 2;
  shape.num_topk = 4;
  shape.hidden = 96;
  shape.max_tokens = 40;
  shape.max_nodes = 2;
  Scenario scenario = make_scenario(shape, rng);
  auto sources = expected_sources(scenario);
  auto results = make_results(scenario, sources, DType::bf16, 0, rng);
  Config config = small_config(rng, shape.hidden, shape.num_topk);
  config.host_workers = 2;
  INFO("channels " << config.num_channels() << " rdma " << config.rdma_ring_slots << "/" << config.rdma_chunk
                   << " nvl " << config.nvl_ring_slots << "/" << config.nvl_chunk);

  const int R = scenario.num_ranks();
  std::vector<DispatchResult> dispatched(R);
  std::vector<Tensor> combined(R);
  std::vector<BufferTraffic> traffic(R);
  run_ranks(
      R, shape.local_size, unique_job_id("dispatch-group"),
      [&](Group& group) {
        Buffer buffer(group, config);
        int rank = group.rank();
        DispatchInputs inputs = inputs_of(scenario, rank);
        DispatchResult got = std::move(
            buffer.dispatch(inputs, buffer.get_layout(inputs.topk_idx, scenario.num_experts)).wait());
        TensorView y(results[rank].data(), {got.handle.recv_rows(), scenario.hidden}, DType::bf16);
        combined[rank] = std::move(buffer.combine(y, got.handle).wait().out);
        dispatched[rank] = std::move(got);
        traffic[rank] = buffer.traffic();
      },
      60s);

  std::string diff = check_dispatch(scenario, sources, dispatched, true);
  INFO(diff);
  REQUIRE(diff.empty());
  diff = check_combine(scenario, expected_combine(scenario, sources, results, DType::bf16), combined);
  REQUIRE(diff.empty());
  ExpectedTraffic expected = expected_traffic(scenario);
  std::uint64_t fabric = 0, within = 0;
  for (const BufferTraffic& one : traffic) {
    fabric += one.dispatch.fabric.messages;
    within += one.dispatch.node.messages + one.dispatch.self.messages;
  }
  CHECK(fabric == expected.fabric);
  CHECK(within == expected.within_node);
}
