// A Buffer's operations are asynchronous and outlive nothing they need: dispatch returns before its peers
// have even issued theirs, operations of one Buffer run in issue order, ~Buffer finishes what was issued, and
// on a host Buffer the stream options are ignored and Event::stream_wait waits on the host.
#include <catch2/catch.hpp>
#include <chrono>
#include <thread>

#include "cluster_run.hpp"
#include "ferry/buffer.hpp"

using namespace ferry;
using namespace ferry::test;
using namespace std::chrono_literals;

namespace {

Pending<DispatchResult> issue_dispatch(ClusterRun& run, const Scenario& scenario, int rank,
                                       const DispatchOptions& options = {}) {
  DispatchInputs inputs = inputs_of(scenario, rank);
  return run.buffers[rank]->dispatch(
      inputs, run.buffers[rank]->get_layout(inputs.topk_idx, scenario.num_experts), options);
}

}  // namespace

TEST_CASE("dispatch returns before its peers have issued theirs, and one Buffer's operations run in order",
          "[unit]") {
  auto rng = seeded("asynchrony");
  Scenario scenario = make_scenario(two_node_shape(2), rng);
  auto sources = expected_sources(scenario);
  ClusterRun run(scenario, small_config(rng, scenario.hidden, scenario.num_topk));

  // Rank 0 issues two dispatches. Neither can finish while the other ranks have issued nothing (every
  // dispatch starts with a count exchange among all ranks), yet both calls have returned.
  Pending<DispatchResult> first = issue_dispatch(run, scenario, 0);
  Pending<DispatchResult> second = issue_dispatch(run, scenario, 0);
  std::this_thread::sleep_for(100ms);
  CHECK_FALSE(first.test());
  CHECK_FALSE(second.test());
  CHECK_THROWS_WITH(first.event().times(), Catch::Contains("has not finished"));

  std::vector<Pending<DispatchResult>> others[2];
  for (int round = 0; round < 2; ++round) {
    for (int r = 1; r < scenario.num_ranks(); ++r) others[round].push_back(issue_dispatch(run, scenario, r));
  }
  REQUIRE(check_dispatch_rank(scenario, sources[0], 0, first.wait(), true).empty());
  REQUIRE(check_dispatch_rank(scenario, sources[0], 0, second.wait(), true).empty());
  for (auto& round : others) {
    for (int r = 1; r < scenario.num_ranks(); ++r) {
      REQUIRE(check_dispatch_rank(scenario, sources[r], r, round[r - 1].wait(), true).empty());
    }
  }
  const Event::Times a = first.event().times(), b = second.event().times();
  CHECK(a.issued <= a.started);
  CHECK(a.started <= a.finished);
  CHECK(b.issued <= b.started);
  CHECK(a.finished <= b.started);         // the second ran after the first, on the Buffer's one queue
  CHECK(a.finished - a.issued >= 100ms);  // it waited for the peers
}

// (The name must not start with "~": Catch2 reads that as "every test but this one".)
TEST_CASE("destroying a Buffer finishes the operations already issued, and their results outlive it",
          "[unit]") {
  auto rng = seeded("lifetime");
  Scenario scenario = make_scenario(two_node_shape(2), rng);
  auto sources = expected_sources(scenario);
  const Config config = small_config(rng, scenario.hidden, scenario.num_topk);
  std::vector<DispatchResult> dispatched;
  {
    ClusterRun run(scenario, config);
    std::vector<Pending<DispatchResult>> pending;
    for (int r = 0; r < scenario.num_ranks(); ++r) pending.push_back(issue_dispatch(run, scenario, r));
    run.buffers.clear();  // without waiting: each destructor runs its rank's dispatch to the end
    for (int r = 0; r < scenario.num_ranks(); ++r) {
      INFO("rank " << r);
      CHECK(pending[r].test());
      dispatched.push_back(std::move(pending[r].wait()));
    }
  }
  REQUIRE(check_dispatch(scenario, sources, dispatched, true).empty());

  // The same for a combine issued on fresh Buffers along a dispatch that ran to completion.
  ClusterRun run(scenario, config);
  dispatched = run.dispatch(scenario);
  auto results = make_results(scenario, sources, DType::bf16, 0, rng);
  std::vector<Pending<CombineResult>> combines;
  for (int r = 0; r < scenario.num_ranks(); ++r) {
    TensorView y(results[r].data(), {dispatched[r].handle.recv_rows(), scenario.hidden}, DType::bf16);
    combines.push_back(run.buffers[r]->combine(y, dispatched[r].handle));
  }
  run.buffers.clear();
  std::vector<Tensor> outputs;
  for (auto& combine : combines) {
    CHECK(combine.test());
    outputs.push_back(std::move(combine.wait().out));
  }
  REQUIRE(
      check_combine(scenario, expected_combine(scenario, sources, results, DType::bf16), outputs).empty());
}

TEST_CASE("on a host Buffer the stream options are ignored and Event::stream_wait waits on the host",
          "[unit]") {
  auto rng = seeded("host streams");
  Scenario scenario = make_scenario_receiving(two_node_shape(2), rng, 2);
  auto sources = expected_sources(scenario);
  ClusterRun run(scenario, small_config(rng, scenario.hidden, scenario.num_topk));
  // Never a cudaStream_t here: a host Buffer must not touch it.
  void* const not_a_stream = reinterpret_cast<void*>(std::uintptr_t{0x10});

  DispatchOptions options;
  options.stream = not_a_stream;
  std::vector<Pending<DispatchResult>> pending;
  for (int r = 0; r < scenario.num_ranks(); ++r) pending.push_back(issue_dispatch(run, scenario, r, options));
  std::vector<DispatchResult> dispatched;
  for (auto& one : pending) {
    one.event().stream_wait(not_a_stream);
    CHECK(one.test());  // the host waited
    dispatched.push_back(std::move(one.wait()));
  }
  REQUIRE(check_dispatch(scenario, sources, dispatched, true).empty());

  auto results = make_results(scenario, sources, DType::bf16, 0, rng);
  CombineOptions combine_options;
  combine_options.stream = not_a_stream;
  std::vector<Pending<CombineResult>> combines;
  for (int r = 0; r < scenario.num_ranks(); ++r) {
    TensorView y(results[r].data(), {dispatched[r].handle.recv_rows(), scenario.hidden}, DType::bf16);
    combines.push_back(run.buffers[r]->combine(y, dispatched[r].handle, combine_options));
  }
  std::vector<Tensor> outputs;
  for (auto& combine : combines) {
    combine.event().stream_wait(nullptr);
    CHECK(combine.test());
    outputs.push_back(std::move(combine.wait().out));
  }
  REQUIRE(
      check_combine(scenario, expected_combine(scenario, sources, results, DType::bf16), outputs).empty());

  // An operation's failure comes out of stream_wait as it does out of wait.
  std::size_t most = 0;
  for (const auto& rows : sources) most = std::max(most, rows.size());
  DispatchOptions small;
  small.num_worst_tokens = static_cast<std::int64_t>(most) - 1;
  small.stream = not_a_stream;
  pending.clear();
  for (int r = 0; r < scenario.num_ranks(); ++r) pending.push_back(issue_dispatch(run, scenario, r, small));
  for (int r = 0; r < scenario.num_ranks(); ++r) {
    INFO("rank " << r << " receives " << sources[r].size() << " rows, room for " << most - 1);
    if (sources[r].size() == most) {
      CHECK_THROWS_WITH(pending[r].event().stream_wait(not_a_stream),
                        Catch::Contains("received " + std::to_string(most)));
    } else {
      CHECK_NOTHROW(pending[r].event().stream_wait(not_a_stream));
    }
  }
}
