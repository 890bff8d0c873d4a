// One rank of the multi-process dispatch tests, started by `ferry launch` (test_dispatch_launch.cpp runs it).
//
//   ferry_dispatch_rank [--seed N] [--rounds R] [--kill-rank V]
//
// Every rank builds the same scenarios from the seed (so each can compute the reference for itself), runs
// dispatch, a cached dispatch and combine on a Group-backed Buffer (shm between local ranks, proxy + fabric
// between nodes), checks its own results exactly and prints "rank <r>: verified <rounds> rounds".
//
// With --kill-rank V, rank V kills itself (SIGKILL) once the first round is done, while the others are
// already inside the next dispatch waiting for it; each survivor prints "rank <r>: failed after <s> s:
// <error>" (they ignore the SIGTERM `ferry launch` sends when a rank dies, to live long enough to say how
// they learned of it).
#include <algorithm>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "cluster_run.hpp"
#include "ferry/buffer.hpp"
#include "ferry/core/error.hpp"
#include "ferry/group.hpp"

using namespace ferry;
using namespace ferry::test;

namespace {

void require(const std::string& diff, int rank, int round, const char* what) {
  if (diff.empty()) return;
  fail(Errc::internal,
       "rank " + std::to_string(rank) + " round " + std::to_string(round) + " " + what + ": " + diff);
}

int run(std::uint64_t seed, int rounds, int kill_rank) {
  GroupOptions group_options;
  if (kill_rank >= 0)
    group_options.timeout = std::chrono::seconds(10);  // leaving without the victim's goodbye
  Group group = Group::from_env(group_options);
  const int rank = group.rank();
  std::mt19937_64 rng(seed);  // the same stream on every rank
  Config config;
  if (kill_rank >= 0) config.timeout = std::chrono::seconds(60);  // a death must be reported well before this
  config.num_sms = 4;
  config.max_hidden = 256;
  config.max_topk = 8;
  config.rdma_ring_slots = 4;
  config.rdma_chunk = 2;
  config.nvl_ring_slots = 4;
  config.nvl_chunk = 2;
  config.max_nodes = std::min(group.num_nodes(), 4);
  Buffer buffer(group, config);
  for (int round = 0; round < rounds; ++round) {
    ScenarioShape shape;
    shape.num_nodes = group.num_nodes();
    shape.local_size = group.local_size();
    shape.experts_per_rank = 2;
    const int experts = shape.experts_per_rank * group.world_size();
    shape.num_topk = 1 + static_cast<int>(rng() % std::min(8, experts));
    shape.hidden = 1 + static_cast<std::int64_t>(rng() % 256);
    shape.dtype = round % 3 == 2 ? DType::fp32 : DType::bf16;
    shape.max_tokens = 48;
    shape.max_nodes = config.max_nodes;
    Scenario scenario = make_scenario(shape, rng);
    auto sources = expected_sources(scenario);
    auto results = make_results(scenario, sources, DType::bf16, 0, rng);
    auto expected = expected_combine(scenario, sources, results, DType::bf16);

    DispatchInputs inputs = inputs_of(scenario, rank);
    if (round == 1 && rank == kill_rank) {
      std::printf("rank %d: dying now\n", rank);
      std::fflush(stdout);
      std::this_thread::sleep_for(
          std::chrono::milliseconds(300));  // the others are in the dispatch; my puts landed
      std::raise(SIGKILL);
    }
    const auto start = std::chrono::steady_clock::now();
    auto pending = buffer.dispatch(inputs, buffer.get_layout(inputs.topk_idx, scenario.num_experts));
    if (kill_rank >= 0 && round == 1) {
      try {
        pending.wait();
      } catch (const Error& error) {
        std::printf("rank %d: failed after %.2f s: %s\n", rank,
                    std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count(),
                    error.what());
        std::fflush(stdout);
        return 3;
      }
    }
    DispatchResult& got = pending.wait();
    require(check_dispatch_rank(scenario, sources[rank], rank, got, true), rank, round, "dispatch");
    auto again = buffer.dispatch(inputs.x, {}, got.handle);
    require(check_dispatch_rank(scenario, sources[rank], rank, again.wait(), false), rank, round,
            "cached dispatch");
    TensorView y(results[rank].data(), {got.handle.recv_rows(), scenario.hidden}, DType::bf16);
    auto combined = buffer.combine(y, got.handle);
    require(check_combine_rank(scenario, expected[rank], rank, combined.wait().out), rank, round, "combine");
  }
  BufferTraffic traffic = buffer.traffic();
  std::printf(
      "rank %d: verified %d rounds (fabric %llu messages, node %llu, self %llu)\n", rank, rounds,
      static_cast<unsigned long long>(traffic.dispatch.fabric.messages + traffic.combine.fabric.messages),
      static_cast<unsigned long long>(traffic.dispatch.node.messages + traffic.combine.node.messages),
      static_cast<unsigned long long>(traffic.dispatch.self.messages + traffic.combine.self.messages));
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t seed = 1;
  int rounds = 3;
  int kill_rank = -1;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--seed") == 0) seed = std::strtoull(argv[i + 1], nullptr, 10);
    if (std::strcmp(argv[i], "--rounds") == 0) rounds = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--kill-rank") == 0) kill_rank = std::atoi(argv[i + 1]);
  }
  if (kill_rank >= 0) std::signal(SIGTERM, SIG_IGN);
  try {
    return run(seed, rounds, kill_rank);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
}
