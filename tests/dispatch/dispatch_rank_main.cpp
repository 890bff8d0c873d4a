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
// they learned of it). With --freeze-rank V, rank V stops itself (SIGSTOP) there instead, and the others'
// operations time out after --op-timeout seconds (default 60). The victim prints "rank V: dying at <t>"
// and every survivor, last thing before it exits, "rank R: exiting at <t>" (t: CLOCK_MONOTONIC in seconds,
// the same clock in every process of the machine), so a test can tell how long the survivors took to end.
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

double monotonic_seconds() {
  timespec now{};
  clock_gettime(CLOCK_MONOTONIC, &now);
  return static_cast<double>(now.tv_sec) + static_cast<double>(now.tv_nsec) * 1e-9;
}

int my_rank = -1;  // for the last line, printed once the Group is gone

struct Victim {
  int rank = -1;
  int signal = SIGKILL;
  double op_timeout_s = 60;  // a death must be reported well before this
};

int run(std::uint64_t seed, int rounds, const Victim& victim) {
  GroupOptions group_options;
  // Leaving must never wait for the victim's goodbye: a bootstrap timeout far above what the test allows.
  if (victim.rank >= 0) group_options.timeout = std::chrono::seconds(30);
  Group group = Group::from_env(group_options);
  const int rank = group.rank();
  my_rank = rank;
  std::mt19937_64 rng(seed);  // the same stream on every rank
  Config config;
  if (victim.rank >= 0)
    config.timeout = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(victim.op_timeout_s));
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
    if (round == 1 && rank == victim.rank) {
      std::this_thread::sleep_for(
          std::chrono::milliseconds(300));  // the others are in the dispatch; my puts landed
      std::printf("rank %d: dying at %.6f (%s)\n", rank, monotonic_seconds(),
                  victim.signal == SIGSTOP ? "SIGSTOP" : "SIGKILL");
      std::fflush(stdout);
      std::raise(victim.signal);
    }
    const auto start = std::chrono::steady_clock::now();
    auto pending = buffer.dispatch(inputs, buffer.get_layout(inputs.topk_idx, scenario.num_experts));
    if (victim.rank >= 0 && round == 1) {
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
  Victim victim;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--seed") == 0) seed = std::strtoull(argv[i + 1], nullptr, 10);
    if (std::strcmp(argv[i], "--rounds") == 0) rounds = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--kill-rank") == 0) victim.rank = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--freeze-rank") == 0) {
      victim.rank = std::atoi(argv[i + 1]);
      victim.signal = SIGSTOP;
    }
    if (std::strcmp(argv[i], "--op-timeout") == 0) victim.op_timeout_s = std::atof(argv[i + 1]);
  }
  if (victim.rank >= 0) std::signal(SIGTERM, SIG_IGN);
  int code = 1;
  try {
    code = run(seed, rounds, victim);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
  }
  // After the Buffer and the Group are gone: what a test measures is when the survivors end.
  if (victim.rank >= 0) {
    std::printf("rank %d: exiting at %.6f\n", my_rank, monotonic_seconds());
    std::fflush(stdout);
  }
  return code;
}
