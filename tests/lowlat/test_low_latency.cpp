// The low-latency mode on in-process clusters against the reference (randomized: FERRY_TEST_SEED repeats a
// run): every topology the normal mode is tested on, fp8 / bf16 / round_scale / UE8M0, hook / async / plain
// calls, tokens that pick no expert, all tokens on one expert, every rank masked in turn, a silent rank
// masked after the timeout, two results held and a third refused, zero-copy combine, statistics.
#include <sys/resource.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <string>
#include <thread>
#include <vector>

#include "cluster.hpp"
#include "common/skip.hpp"
#include "dispatch/cluster_run.hpp"
#include "ferry/devices.hpp"
#include "support/check_error.hpp"

#define CHECK_ERROR(call, code, text) check_error([&] { (void)(call); }, code, text)

using namespace ferry;
using namespace ferry::test;

namespace {

struct Topology {
  int nodes;
  int local;
};

// One round: a scenario with random flags and call modes, dispatch and combine checked on every rank.
void round_trip(LowLatencyCluster& cluster, const LowLatencyScenario& scenario, const DispatchFlags& flags,
                CallMode dispatch_mode, CallMode combine_mode, bool zero_copy, const Masked& masked) {
  INFO("flags fp8 " << flags.fp8 << " round_scale " << flags.round_scale << " ue8m0 " << flags.ue8m0
                    << ", dispatch " << to_string(dispatch_mode) << ", combine " << to_string(combine_mode)
                    << (zero_copy ? " zero-copy" : ""));
  auto sent = cluster.dispatch(scenario, flags, dispatch_mode, masked);
  for (int r = 0; r < cluster.num_ranks(); ++r) {
    if (masked[r]) continue;
    CHECK(check_low_latency_dispatch(scenario, r, masked, flags, *sent[r]) == "");
  }
  auto combined = cluster.combine(scenario, sent, combine_mode, masked, zero_copy);
  for (int r = 0; r < cluster.num_ranks(); ++r) {
    if (masked[r]) continue;
    CHECK(check_low_latency_combine(scenario, r, masked, combined[r].data()) == "");
  }
}

DispatchFlags random_flags(std::mt19937_64& rng) {
  DispatchFlags flags;
  flags.fp8 = rng() % 3 != 0;
  flags.round_scale = flags.fp8 && rng() % 2 == 0;
  flags.ue8m0 = flags.round_scale && rng() % 2 == 0;
  return flags;
}

LowLatencyShapeSpec spec_of(int nodes, int local, std::int64_t hidden, std::int64_t max_tokens) {
  LowLatencyShapeSpec spec;
  spec.num_nodes = nodes;
  spec.local_size = local;
  spec.hidden = hidden;
  spec.max_tokens = max_tokens;
  return spec;
}

CallMode random_mode(std::mt19937_64& rng) {
  return static_cast<CallMode>(rng() % 3);
}

}  // namespace

TEST_CASE("low-latency dispatch and combine match the reference on 1x8, 2x2, 3x3 and 5x1", "[lowlat]") {
  auto rng = seeded("low-latency reference");
  for (Topology topo : {Topology{1, 8}, Topology{2, 2}, Topology{3, 3}, Topology{5, 1}}) {
    LowLatencyShapeSpec spec = spec_of(topo.nodes, topo.local, 384, 12);
    spec.experts_per_rank = 3;
    const int R = topo.nodes * topo.local;
    LowLatencyCluster cluster(topo.nodes, topo.local,
                              get_low_latency_rdma_size_hint(spec.max_tokens, spec.hidden, R, 3 * R));
    const Masked none(R, false);
    for (int round = 0; round < 6; ++round) {
      INFO(topo.nodes << "x" << topo.local << " round " << round);
      spec.num_topk = 1 + static_cast<int>(rng() % 6);
      const LowLatencyScenario scenario = make_low_latency_scenario(spec, rng);
      round_trip(cluster, scenario, random_flags(rng), random_mode(rng), random_mode(rng), rng() % 2 == 0,
                 none);
    }
  }
}

// Every phase as two role instances, each run by three threads that share its state exactly as warp groups do
// on a GPU: a role whose threads would take different branches or write shared state from a non-leader fails
// here (and under TSan), on the CPU.
TEST_CASE("low-latency: the GPU's execution model on the CPU (groups of lanes) gives the reference results",
          "[lowlat]") {
  auto rng = seeded("low-latency lanes");
  for (Topology topo : {Topology{2, 2}, Topology{1, 3}}) {
    const int R = topo.nodes * topo.local;
    LowLatencyShapeSpec spec = spec_of(topo.nodes, topo.local, 256, 8);
    LowLatencyCluster cluster(topo.nodes, topo.local, get_low_latency_rdma_size_hint(8, 256, R, 2 * R),
                              std::chrono::seconds(20), 3);
    for (int round = 0; round < 3; ++round) {
      INFO(topo.nodes << "x" << topo.local << " round " << round);
      const LowLatencyScenario scenario = make_low_latency_scenario(spec, rng);
      round_trip(cluster, scenario, random_flags(rng), CallMode::async, CallMode::async, round == 1,
                 Masked(R, false));
    }
  }
}

TEST_CASE("low-latency: every token on one expert fills its slots, tokens without experts send nothing",
          "[lowlat]") {
  auto rng = seeded("low-latency one expert");
  LowLatencyShapeSpec spec = spec_of(2, 2, 256, 20);
  spec.num_topk = 3;
  spec.routing = LowLatencyRouting::one_expert;
  LowLatencyCluster cluster(2, 2, get_low_latency_rdma_size_hint(20, 256, 4, 8));
  const Masked none(4, false);
  const LowLatencyScenario crowded = make_low_latency_scenario(spec, rng);
  round_trip(cluster, crowded, {true, false, false}, CallMode::hook, CallMode::async, false, none);
  // Expert 0 got every token of every rank: 4 * 20 rows, the whole slot area.
  // (check_low_latency_dispatch compared recv_count with the reference; here the count itself.)
  LowLatencyScenario empty = crowded;
  for (LowLatencyRank& rank : empty.ranks) std::fill(rank.topk.begin(), rank.topk.end(), -1);
  round_trip(cluster, empty, {false, false, false}, CallMode::async, CallMode::hook, false, none);
  LowLatencyScenario nothing = crowded;
  for (LowLatencyRank& rank : nothing.ranks) {
    rank.num_tokens = 0;
    rank.x.clear();
    rank.topk.clear();
    rank.weights.clear();
  }
  round_trip(cluster, nothing, {true, true, true}, CallMode::plain, CallMode::plain, true, none);
}

TEST_CASE("low-latency: every rank masked in turn is skipped by the others, and comes back after a clean",
          "[lowlat]") {
  auto rng = seeded("low-latency masked in turn");
  for (Topology topo : {Topology{2, 2}, Topology{1, 3}}) {
    const int R = topo.nodes * topo.local;
    LowLatencyShapeSpec spec = spec_of(topo.nodes, topo.local, 128, 8);
    LowLatencyCluster cluster(topo.nodes, topo.local, get_low_latency_rdma_size_hint(8, 128, R, 2 * R));
    for (int victim = 0; victim < R; ++victim) {
      INFO(topo.nodes << "x" << topo.local << " victim " << victim);
      const LowLatencyScenario scenario = make_low_latency_scenario(spec, rng);
      Masked masked(R, false);
      masked[victim] = true;
      cluster.mask_everywhere(masked);
      round_trip(cluster, scenario, random_flags(rng), random_mode(rng), random_mode(rng), false, masked);
      std::vector<std::int32_t> status(R, -1);
      const int observer = (victim + 1) % R;
      cluster.buffer(observer).low_latency_query_mask_buffer(TensorView(status.data(), {R}, DType::int32));
      for (int r = 0; r < R; ++r) CHECK(status[r] == (r == victim ? 1 : 0));
      cluster.clean(scenario);
      round_trip(cluster, scenario, random_flags(rng), random_mode(rng), random_mode(rng), false,
                 Masked(R, false));
    }
  }
}

TEST_CASE("low-latency: a rank that stays silent is masked after the timeout and decoding goes on",
          "[lowlat]") {
  auto rng = seeded("low-latency silent rank");
  LowLatencyShapeSpec spec = spec_of(2, 2, 128, 8);
  LowLatencyCluster cluster(2, 2, get_low_latency_rdma_size_hint(8, 128, 4, 8),
                            std::chrono::milliseconds(300));
  const int silent = 3;
  Masked masked(4, false);
  masked[silent] = true;  // takes no part; nobody masks it beforehand
  const LowLatencyScenario scenario = make_low_latency_scenario(spec, rng);
  const auto start = std::chrono::steady_clock::now();
  round_trip(cluster, scenario, {true, false, false}, CallMode::async, CallMode::async, false, masked);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(seconds >= 0.3);
  CHECK(seconds < 10.0);
  for (int r = 0; r < 3; ++r) {
    std::vector<std::int32_t> status(4, -1);
    cluster.buffer(r).low_latency_query_mask_buffer(TensorView(status.data(), {4}, DType::int32));
    CHECK(status == std::vector<std::int32_t>{0, 0, 0, 1});
    const LowLatencyStats stats = cluster.buffer(r).low_latency_stats();
    CHECK(stats.dispatch_wait_ns[silent] >= 300'000'000);  // waited the timeout for its rows, once
  }
  // The next operations skip it at once.
  const auto again = std::chrono::steady_clock::now();
  round_trip(cluster, scenario, {false, false, false}, CallMode::hook, CallMode::hook, false, masked);
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - again).count() < 0.3);
}

// A caller masks a rank that is alive and still taking its previous combine (its hook not run yet): within a
// node it reads the others' staging, so they must not overwrite it before it has released that use, masked
// or not. Before the release was counted per use taken part in, the others' next combine skipped the masked
// rank's release and wrote over the rows it was about to read (seen under load in the 2 x 2 masked-in-turn
// job; here made certain by holding the hook).
TEST_CASE("low-latency: a rank masked while it still reads the last combine gets that combine right",
          "[lowlat]") {
  auto rng = seeded("low-latency masked while reading");
  const LowLatencyShapeSpec spec = spec_of(1, 3, 128, 8);
  LowLatencyCluster cluster(1, 3, get_low_latency_rdma_size_hint(8, 128, 3, spec.experts_per_rank * 3));
  const Masked none(3, false);
  const LowLatencyScenario a = make_low_latency_scenario(spec, rng);
  const LowLatencyScenario b = make_low_latency_scenario(spec, rng);
  const int slow = 1;
  auto sent = cluster.dispatch(a, {false, false, false}, CallMode::plain, none);
  // Every rank issues combine a; ranks 0 and 2 take theirs, rank 1 holds its hook.
  const std::int64_t L = a.local_experts();
  std::vector<std::vector<std::uint16_t>> y(3), out(3);
  std::vector<LowLatencyCombineResult> combined;
  for (int r = 0; r < 3; ++r) {
    y[r].resize(static_cast<std::size_t>(L * a.rows_per_expert() * a.hidden));
    fill_expert_outputs(a, r, *sent[r], y[r].data());
    out[r].resize(static_cast<std::size_t>(a.ranks[r].num_tokens * a.hidden));
    LowLatencyCombineOptions options;
    options.return_recv_hook = true;
    options.out = TensorView(out[r].data(), {a.ranks[r].num_tokens, a.hidden}, DType::bf16);
    combined.push_back(cluster.buffer(r).low_latency_combine(
        TensorView(y[r].data(), {L, a.rows_per_expert(), a.hidden}, DType::bf16), a.topk(r), a.weights(r),
        sent[r]->handle, options));
  }
  combined[0].hook();
  combined[2].hook();
  // The others mask the slow rank and run a round without it, its combine writing the staging again.
  Masked masked(3, false);
  masked[slow] = true;
  for (int r : {0, 2}) cluster.buffer(r).low_latency_update_mask_buffer(slow, true);
  std::string round_error;
  std::thread others([&] {
    try {
      auto sent_b = cluster.dispatch(b, {false, false, false}, CallMode::plain, masked);
      auto out_b = cluster.combine(b, sent_b, CallMode::plain, masked, false);
      for (int r : {0, 2}) {
        const std::string diff = check_low_latency_combine(b, r, masked, out_b[r].data());
        if (!diff.empty() && round_error.empty()) round_error = diff;
      }
    } catch (const std::exception& error) {
      round_error = error.what();
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  combined[slow].hook();  // reads ranks 0 and 2's staging now
  others.join();
  CHECK(round_error == "");
  for (int r = 0; r < 3; ++r) {
    INFO("rank " << r);
    CHECK(check_low_latency_combine(a, r, none, out[r].data()) == "");
  }
}

TEST_CASE("low-latency: two results may be held, a third operation is refused by name", "[lowlat]") {
  auto rng = seeded("low-latency held results");
  LowLatencyShapeSpec spec = spec_of(2, 1, 128, 8);
  LowLatencyCluster cluster(2, 1, get_low_latency_rdma_size_hint(8, 128, 2, 4));
  const Masked none(2, false);
  const LowLatencyScenario a = make_low_latency_scenario(spec, rng);
  const LowLatencyScenario b = make_low_latency_scenario(spec, rng);
  LowLatencyDispatchOptions hook;
  hook.return_recv_hook = true;
  std::vector<LowLatencyDispatchResult> first, second;
  for (int r = 0; r < 2; ++r)
    first.push_back(cluster.buffer(r).low_latency_dispatch(a.x(r), a.topk(r), 8, 4, hook));
  for (int r = 0; r < 2; ++r)
    second.push_back(cluster.buffer(r).low_latency_dispatch(b.x(r), b.topk(r), 8, 4, hook));
  CHECK_ERROR(cluster.buffer(0).low_latency_dispatch(a.x(0), a.topk(0), 8, 4, hook), Errc::invalid_argument,
              "two low-latency results are held (operation 0 (dispatch) and operation 1 (dispatch))");
  // A combine needs its dispatch received.
  std::vector<std::uint16_t> y(2 * 16 * 128);
  CHECK_ERROR(cluster.buffer(0).low_latency_combine(TensorView(y.data(), {2, 16, 128}, DType::bf16),
                                                    a.topk(0), a.weights(0), first[0].handle),
              Errc::invalid_argument, "has not been received: call its hook first");
  // Hooks in the other order than issued: results are per operation.
  for (int r = 0; r < 2; ++r) second[r].hook();
  for (int r = 0; r < 2; ++r) first[r].hook();
  CHECK_ERROR(first[0].hook(), Errc::invalid_argument, "already been called");
  for (int r = 0; r < 2; ++r) {
    CHECK(check_low_latency_dispatch(a, r, none, {true, false, false}, first[r]) == "");
    CHECK(check_low_latency_dispatch(b, r, none, {true, false, false}, second[r]) == "");
  }
  // With both taken, the third goes.
  round_trip(cluster, a, {true, false, false}, CallMode::hook, CallMode::plain, true, none);
}

// A buffer carries a dispatch in one operation and a combine in a later one: D,D,C,C (two micro-batches, as
// DeepEP's decoding overlaps them) puts combine A on dispatch A's buffer, D,C,D,C puts every combine on the
// other buffer than its dispatch. Several rounds of both, in and across nodes, each checked with the
// reference.
TEST_CASE("low-latency: DDCC and DCDC rounds on one buffer pair match the reference", "[lowlat]") {
  auto rng = seeded("low-latency operation patterns");
  for (Topology topo : {Topology{2, 2}, Topology{1, 4}}) {
    const int R = topo.nodes * topo.local;
    LowLatencyShapeSpec spec = spec_of(topo.nodes, topo.local, 256, 8);
    spec.num_topk = 3;
    LowLatencyCluster cluster(topo.nodes, topo.local, get_low_latency_rdma_size_hint(8, 256, R, 2 * R));
    const Masked none(R, false);
    for (int round = 0; round < 3; ++round) {
      INFO(topo.nodes << "x" << topo.local << " round " << round);
      const DispatchFlags flags = random_flags(rng);
      const LowLatencyScenario a = make_low_latency_scenario(spec, rng);
      const LowLatencyScenario b = make_low_latency_scenario(spec, rng);
      // D,D,C,C: operations 4n .. 4n + 3 on buffers 0, 1, 0, 1.
      auto sent_a = cluster.dispatch(a, flags, CallMode::hook, none);
      auto sent_b = cluster.dispatch(b, flags, CallMode::hook, none);
      for (int r = 0; r < R; ++r) {
        CHECK(check_low_latency_dispatch(a, r, none, flags, *sent_a[r]) == "");
        CHECK(check_low_latency_dispatch(b, r, none, flags, *sent_b[r]) == "");
      }
      const auto out_a = cluster.combine(a, sent_a, CallMode::hook, none, false);
      const auto out_b = cluster.combine(b, sent_b, CallMode::plain, none, round % 2 == 1);
      for (int r = 0; r < R; ++r) {
        CHECK(check_low_latency_combine(a, r, none, out_a[r].data()) == "");
        CHECK(check_low_latency_combine(b, r, none, out_b[r].data()) == "");
      }
      // D,C,D,C.
      round_trip(cluster, a, flags, CallMode::plain, CallMode::hook, false, none);
      round_trip(cluster, b, flags, CallMode::hook, CallMode::plain, round % 2 == 0, none);
    }
  }
}

TEST_CASE("low-latency: a hook that outlives its buffer fails by name", "[lowlat]") {
  auto rng = seeded("low-latency orphan hook");
  LowLatencyShapeSpec spec = spec_of(1, 1, 128, 4);
  const LowLatencyScenario scenario = make_low_latency_scenario(spec, rng);
  LowLatencyHook hook;
  {
    LowLatencyCluster cluster(1, 1, get_low_latency_rdma_size_hint(4, 128, 1, 2));
    LowLatencyDispatchOptions options;
    options.return_recv_hook = true;
    hook = cluster.buffer(0).low_latency_dispatch(scenario.x(0), scenario.topk(0), 4, 2, options).hook;
  }
  CHECK_ERROR(hook(), Errc::invalid_argument, "LowLatencyBuffer was destroyed before the hook ran");
}

TEST_CASE("low-latency hook: the send half returns before any peer sends, and nothing runs until the hook",
          "[lowlat]") {
  auto rng = seeded("low-latency hook");
  LowLatencyShapeSpec spec = spec_of(2, 2, 256, 16);
  LowLatencyCluster cluster(2, 2, get_low_latency_rdma_size_hint(16, 256, 4, 8));
  const LowLatencyScenario scenario = make_low_latency_scenario(spec, rng);
  LowLatencyDispatchOptions hook;
  hook.return_recv_hook = true;
  std::vector<LowLatencyDispatchResult> sent;
  const auto start = std::chrono::steady_clock::now();
  sent.push_back(cluster.buffer(0).low_latency_dispatch(scenario.x(0), scenario.topk(0), 16, 8, hook));
  CHECK(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() < 1.0);
  for (int r = 1; r < 4; ++r)
    sent.push_back(cluster.buffer(r).low_latency_dispatch(scenario.x(r), scenario.topk(r), 16, 8, hook));
  // Between the halves no thread of ferry's works: the process burns (almost) no CPU while this one sleeps.
  rusage before{}, after{};
  getrusage(RUSAGE_SELF, &before);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  getrusage(RUSAGE_SELF, &after);
  auto cpu = [](const rusage& usage) {
    return usage.ru_utime.tv_sec + usage.ru_stime.tv_sec +
           1e-6 * (usage.ru_utime.tv_usec + usage.ru_stime.tv_usec);
  };
  CHECK(cpu(after) - cpu(before) < 0.05);
  for (auto& result : sent) result.hook();
  for (int r = 0; r < 4; ++r)
    CHECK(check_low_latency_dispatch(scenario, r, Masked(4, false), {}, sent[r]) == "");
}

TEST_CASE("low-latency zero-copy combine sends from the staging get_next_low_latency_combine_buffer returns",
          "[lowlat]") {
  auto rng = seeded("low-latency zero copy");
  LowLatencyShapeSpec spec = spec_of(1, 4, 128, 8);
  LowLatencyCluster cluster(1, 4, get_low_latency_rdma_size_hint(8, 128, 4, 8));
  const Masked none(4, false);
  for (int round = 0; round < 3; ++round) {
    const LowLatencyScenario scenario = make_low_latency_scenario(spec, rng);
    round_trip(cluster, scenario, random_flags(rng), CallMode::hook, CallMode::hook, true, none);
  }
  // Anything but the staging of the combine's own buffer is refused.
  const LowLatencyScenario scenario = make_low_latency_scenario(spec, rng);
  auto sent = cluster.dispatch(scenario, {}, CallMode::async, none);
  const TensorView staging = cluster.buffer(0).get_next_low_latency_combine_buffer(sent[0]->handle);
  CHECK(staging.size(0) == 2);
  CHECK(staging.size(1) == 32);
  CHECK(staging.size(2) == 128);
  std::vector<std::uint16_t> y(2 * 32 * 128);
  LowLatencyCombineOptions zero_copy;
  zero_copy.zero_copy = true;
  CHECK_ERROR(
      cluster.buffer(0).low_latency_combine(TensorView(y.data(), {2, 32, 128}, DType::bf16), scenario.topk(0),
                                            scenario.weights(0), sent[0]->handle, zero_copy),
      Errc::invalid_argument, "zero_copy: x is not the staging of this combine's buffer");
}

TEST_CASE("low-latency statistics count every received row per local expert and the waits per source",
          "[lowlat]") {
  auto rng = seeded("low-latency statistics");
  LowLatencyShapeSpec spec = spec_of(2, 2, 128, 8);
  LowLatencyCluster cluster(2, 2, get_low_latency_rdma_size_hint(8, 128, 4, 8));
  const Masked none(4, false);
  std::vector<std::vector<std::int64_t>> expected(4, std::vector<std::int64_t>(2, 0));
  std::vector<std::int32_t> caller(2, 0);
  std::vector<std::int64_t> caller_wait(4, 0);
  for (int round = 0; round < 3; ++round) {
    const LowLatencyScenario scenario = make_low_latency_scenario(spec, rng);
    std::vector<LowLatencyDispatchResult> sent;
    for (int r = 0; r < 4; ++r) {
      LowLatencyDispatchOptions options;
      options.return_recv_hook = true;
      if (r == 0) {
        options.cumulative_local_expert_recv_stats = TensorView(caller.data(), {2}, DType::int32);
        options.dispatch_wait_recv_cost_stats = TensorView(caller_wait.data(), {4}, DType::int64);
      }
      sent.push_back(cluster.buffer(r).low_latency_dispatch(scenario.x(r), scenario.topk(r), 8, 8, options));
    }
    for (auto& result : sent) result.hook();
    for (int r = 0; r < 4; ++r) {
      const auto rows = expected_low_latency_rows(scenario, r, none);
      for (int e = 0; e < 2; ++e) expected[r][e] += static_cast<std::int64_t>(rows[e].size());
    }
  }
  for (int r = 0; r < 4; ++r) {
    const LowLatencyStats stats = cluster.buffer(r).low_latency_stats();
    CHECK(stats.local_expert_recv == expected[r]);
    // Across nodes, per operation: an arrival and a release for each of the 2 ranks of the other node,
    // whatever the number of experts; one put of counts each, and at most one of rows per expert there.
    CHECK(stats.fabric_signals == 3 * (2 + 2));
    CHECK(stats.fabric_puts >= 3 * 2);
    CHECK(stats.fabric_puts <= 3 * (2 + 4));
  }
  CHECK(std::vector<std::int64_t>(caller.begin(), caller.end()) == expected[0]);
  CHECK(cluster.buffer(0).low_latency_stats().dispatch_wait_ns == caller_wait);
}

// Ranks that pass different num_experts place their counts differently (the arrival words do not move: they
// depend on the ranks only), so a count block read where another rank never wrote must fail by name, within a
// node and across nodes, instead of reading an unwritten count as operation 0 with -1 rows. The same after a
// clean in which the last rank passed another shape: operations count from 0 again, so a block it left
// before the clean (where its new layout writes nothing, with 4 ranks) would read as one of this operation's;
// a clean clears them.
TEST_CASE("low-latency: ranks that disagree about num_experts fail by name", "[lowlat]") {
#if defined(__SANITIZE_THREAD__)
  // Ranks of different layouts read words at offsets other ranks wrote under theirs, unordered by the
  // arrivals: ThreadSanitizer reports it (a race of the misuse this test provokes, within one process here).
  ferry::test::skip("ranks with different layouts race on each other's words by construction (TSan build)");
#endif
  for (Topology topo : {Topology{1, 2}, Topology{2, 1}, Topology{1, 4}, Topology{2, 2}}) {
    const int R = topo.nodes * topo.local;
    const bool after_clean = R == 4;
    INFO(topo.nodes << "x" << topo.local << (after_clean ? ", after a clean with another shape" : ""));
    const std::int64_t experts = 2 * R;  // the last rank passes twice as many
    LowLatencyCluster cluster(topo.nodes, topo.local, get_low_latency_rdma_size_hint(4, 128, R, 2 * experts),
                              std::chrono::seconds(5));
    std::vector<std::uint16_t> x(4 * 128, 0x3f80);
    std::vector<std::int64_t> topk = {0, 1, 1, 2, 2, 3, 3, 0};  // [4, 2]: experts every rank knows
    // No rows in the call that disagrees: a rank that places rows by another shape puts them where its peer
    // writes its own staging (a race no check can prevent); the counts and arrivals still go.
    std::vector<std::int64_t> no_rows(topk.size(), -1);
    std::vector<std::string> errors(R);
    auto on_every_rank = [&](auto&& call) {
      std::vector<std::thread> ranks;
      for (int r = 0; r < R; ++r) {
        ranks.emplace_back([&, r] {
          try {
            call(r);
          } catch (const Error& e) {
            errors[r] = e.what();
          }
        });
      }
      for (std::thread& rank : ranks) rank.join();
    };
    auto experts_of = [&](int r) { return r == R - 1 ? 2 * experts : experts; };
    auto dispatch = [&](int r, std::int64_t num_experts, std::vector<std::int64_t>& ids) {
      LowLatencyDispatchOptions options;
      options.use_fp8 = false;
      LowLatencyDispatchResult got = cluster.buffer(r).low_latency_dispatch(
          TensorView(x.data(), {4, 128}, DType::bf16), TensorView(ids.data(), {4, 2}, DType::int64), 4,
          num_experts, options);
      (void)got;
    };
    if (after_clean) {
      on_every_rank([&](int r) { dispatch(r, experts, topk); });
      REQUIRE(errors == std::vector<std::string>(R));
      on_every_rank([&](int r) { cluster.buffer(r).clean_low_latency_buffer(4, 128, experts_of(r)); });
      REQUIRE(errors == std::vector<std::string>(R));
    }
    on_every_rank([&](int r) { dispatch(r, experts_of(r), no_rows); });
    for (int r = 0; r < R; ++r) {
      INFO("rank " << r << ": " << errors[r]);
      CHECK(errors[r].find("a block of counts from rank ") != std::string::npos);
      CHECK(errors[r].find("laid out for another shape") != std::string::npos);
      CHECK(errors[r].find("num_experts") != std::string::npos);
    }
  }
}

TEST_CASE("low-latency: a LowLatencyBuffer on Device::cuda on a machine without a GPU is refused by name",
          "[lowlat]") {
  if (!probe_machine().gpus.empty()) ferry::test::skip("this machine has a GPU (tests/gpu covers it there)");
  Group group = Group::from_job(JobEnv{});
  LowLatencyConfig config;
  config.num_rdma_bytes = get_low_latency_rdma_size_hint(8, 256, 1, 4);
  try {
    LowLatencyBuffer buffer(group, config, Device::cuda);
    FAIL("a LowLatencyBuffer on the GPU was built without a GPU");
  } catch (const Error& error) {
    CHECK(error.code() == Errc::unsupported);
    const std::string what = error.what();
    CHECK((what.find("LowLatencyBuffer on the GPU needs one") != std::string::npos ||
           what.find("without CUDA") != std::string::npos));
  }
  config.host_lanes = 2;
  CHECK_ERROR(LowLatencyBuffer(group, config, Device::cuda), Errc::invalid_argument,
              "host_lanes is for the host executor");
}

TEST_CASE("low-latency: bad input is refused by name before anything is sent", "[lowlat]") {
  auto rng = seeded("low-latency bad input");
  LowLatencyShapeSpec spec = spec_of(1, 2, 256, 8);
  LowLatencyCluster cluster(1, 2, get_low_latency_rdma_size_hint(16, 256, 2, 4));
  LowLatencyScenario scenario = make_low_latency_scenario(spec, rng);
  scenario.ranks[0].num_tokens = 8;
  scenario.ranks[0].x.assign(8 * 256, 0);
  scenario.ranks[0].topk.assign(8 * scenario.num_topk, -1);
  for (int t = 0; t < 8; ++t) scenario.ranks[0].topk[t * scenario.num_topk] = t % 4;
  scenario.ranks[0].weights.assign(8 * scenario.num_topk, 0.5f);
  LowLatencyBuffer& buffer = cluster.buffer(0);
  const TensorView x = scenario.x(0);
  const TensorView topk = scenario.topk(0);
  CHECK_ERROR(buffer.low_latency_dispatch(x, topk, 4, 4), Errc::invalid_argument,
              "x has 8 tokens, more than num_max_dispatch_tokens_per_rank = 4");
  std::vector<std::int64_t> bad(topk.data_as<std::int64_t>(), topk.data_as<std::int64_t>() + topk.numel());
  bad[5] = 4;
  CHECK_ERROR(
      buffer.low_latency_dispatch(x, TensorView(bad.data(), {8, scenario.num_topk}, DType::int64), 8, 4),
      Errc::invalid_argument, "is neither -1 nor an expert in [0, 4)");
  if (scenario.num_topk >= 2) {
    std::vector<std::int64_t> twice = bad;
    twice[5] = -1;
    twice[scenario.num_topk + 1] = twice[scenario.num_topk];
    CHECK_ERROR(
        buffer.low_latency_dispatch(x, TensorView(twice.data(), {8, scenario.num_topk}, DType::int64), 8, 4),
        Errc::invalid_argument, "topk_idx[1] names expert 1 twice (slot 1)");
  }
  std::vector<std::uint16_t> narrow(8 * 200);
  CHECK_ERROR(buffer.low_latency_dispatch(TensorView(narrow.data(), {8, 200}, DType::bf16), topk, 8, 4),
              Errc::invalid_argument, "hidden 200 is not a multiple of 128");
  CHECK_ERROR(buffer.low_latency_dispatch(x, topk, 8, 64), Errc::invalid_argument,
              "(get_low_latency_rdma_size_hint)");
  CHECK_ERROR(buffer.low_latency_dispatch(x, topk, 8, 3), Errc::invalid_argument,
              "num_experts must be a positive multiple of the 2 ranks");
  LowLatencyDispatchOptions options;
  options.use_ue8m0 = true;
  CHECK_ERROR(buffer.low_latency_dispatch(x, topk, 8, 4, options), Errc::invalid_argument,
              "use_ue8m0 needs round_scale");
  options = {};
  options.async_finish = options.return_recv_hook = true;
  CHECK_ERROR(buffer.low_latency_dispatch(x, topk, 8, 4, options), Errc::invalid_argument,
              "async_finish and return_recv_hook exclude each other");
  options = {};
  std::vector<std::int32_t> stats(3);
  options.cumulative_local_expert_recv_stats = TensorView(stats.data(), {3}, DType::int32);
  CHECK_ERROR(buffer.low_latency_dispatch(x, topk, 8, 4, options), Errc::invalid_argument,
              "cumulative_local_expert_recv_stats must be [2] int32");
  CHECK_ERROR(buffer.low_latency_update_mask_buffer(0, true), Errc::invalid_argument, "cannot mask itself");
  CHECK_ERROR(buffer.low_latency_update_mask_buffer(2, true), Errc::invalid_argument,
              "rank_to_mask 2 is not in");
  LocalCluster spare(1, 2, tiny_normal_config());
  CHECK_ERROR(LowLatencyBuffer(spare, 0, LowLatencyConfig{}), Errc::invalid_argument, "num_rdma_bytes is 0");
  // One expert's block of bf16 messages of hidden 32768 (65552 bytes each): 65520 of them fit the 32 bits a
  // fabric put carries, 65521 do not.
  CHECK_ERROR(get_low_latency_rdma_size_hint(65521, 32768, 2, 4), Errc::invalid_argument,
              "beyond the 32-bit size of a fabric put");
  CHECK(get_low_latency_rdma_size_hint(65520, 32768, 2, 4) > 0);
  // Nothing was sent: a valid round still works.
  round_trip(cluster, scenario, {}, CallMode::hook, CallMode::hook, false, Masked(2, false));
  // Combine with another routing than its dispatch's.
  auto sent = cluster.dispatch(scenario, {}, CallMode::async, Masked(2, false));
  std::vector<std::int64_t> other(topk.data_as<std::int64_t>(), topk.data_as<std::int64_t>() + topk.numel());
  other[0] = other[0] == 0 ? 1 : 0;
  std::vector<std::uint16_t> y(2 * 16 * 256);
  CHECK_ERROR(buffer.low_latency_combine(TensorView(y.data(), {2, 16, 256}, DType::bf16),
                                         TensorView(other.data(), {8, scenario.num_topk}, DType::int64),
                                         scenario.weights(0), sent[0]->handle),
              Errc::invalid_argument, "combine takes the dispatch's topk_idx");
  CHECK_ERROR(buffer.low_latency_combine(TensorView(y.data(), {2, 8, 256}, DType::bf16), topk,
                                         scenario.weights(0), sent[0]->handle),
              Errc::invalid_argument, "x must be [2, 16, 256] bf16");
  CHECK_ERROR(cluster.buffer(1).low_latency_combine(TensorView(y.data(), {2, 16, 256}, DType::bf16), topk,
                                                    scenario.weights(0), sent[0]->handle),
              Errc::invalid_argument, "belongs to another LowLatencyBuffer");
  // A new shape needs a clean first.
  CHECK_ERROR(buffer.low_latency_dispatch(x, topk, 16, 4), Errc::invalid_argument,
              "call clean_low_latency_buffer with the new shape first");
}
