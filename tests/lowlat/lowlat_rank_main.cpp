// One rank of the multi-process low-latency tests, started by `ferry launch` (test_low_latency_launch.cpp).
//
//   ferry_lowlat_rank --scenario verify|masked|kill [--seed N] [--rounds R] [--victim V] [--sub-group 1]
//
// Every rank builds the same scenarios from rank 0's seed (so each computes the reference for itself) and
// runs them on a Group-backed LowLatencyBuffer: shm between a node's ranks, the proxy and the fabric between
// nodes.
//   verify  rounds of dispatch and combine with random flags and call modes; "rank R: verified N rounds ok"
//   masked  every rank in turn sits out while the others mask it, then a clean brings it back;
//           "rank R: masked in turn ok"
//   kill    after a verified round, rank V kills itself (SIGKILL); the others go on: their next round masks
//           it (in less than the timeout: the store names it to every survivor) and is checked with it left
//           out, the round after takes less than the timeout too; "rank R: went on without rank V ok" (they
//           ignore the SIGTERM `ferry launch` sends when a rank dies, to finish)
// --sub-group 1: the scenario runs on a sub-group of the job without the last rank of each node
// (Group::split; ranks and the victim are the sub-group's); the others only say "job rank R: not a member"
// and leave.
#include <csignal>
#include <cstdio>
#include <optional>
#include <thread>
#include <vector>

#include "dispatch/low_latency_reference.hpp"
#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/low_latency.hpp"
#include "integration/worker_common.hpp"

using namespace ferry;
using namespace ferry::test;

namespace {

// The low-latency timeout of the kill scenario: a rank silent this long is masked. Long enough that a round
// which heard of the death from the store (milliseconds) never comes near it on a loaded machine.
constexpr std::chrono::seconds kKillTimeout{3};

void require(const std::string& diff) {
  if (!diff.empty()) fail(Errc::internal, diff);
}

struct Job {
  Group& group;
  LowLatencyBuffer& buffer;
  std::mt19937_64& rng;
};

LowLatencyShapeSpec shape_of(Group& group) {
  LowLatencyShapeSpec spec;
  spec.num_nodes = group.num_nodes();
  spec.local_size = group.local_size();
  spec.experts_per_rank = 3;
  spec.hidden = 256;
  spec.max_tokens = 16;
  return spec;
}

// One dispatch and combine on this rank, checked against the reference; the flags and modes come from the
// shared stream, so every rank draws the same.
void round_trip(Job& job, const LowLatencyScenario& scenario, const Masked& masked) {
  const int rank = job.group.rank();
  DispatchFlags flags;
  flags.fp8 = job.rng() % 3 != 0;
  flags.round_scale = flags.fp8 && job.rng() % 2 == 0;
  flags.ue8m0 = flags.round_scale && job.rng() % 2 == 0;
  const int dispatch_mode = static_cast<int>(job.rng() % 3);
  const int combine_mode = static_cast<int>(job.rng() % 3);
  const bool zero_copy = job.rng() % 2 == 0;
  if (masked[rank]) return;  // sits out (after drawing what the others draw)

  LowLatencyDispatchOptions options;
  options.use_fp8 = flags.fp8;
  options.round_scale = flags.round_scale;
  options.use_ue8m0 = flags.ue8m0;
  options.return_recv_hook = dispatch_mode == 0;
  options.async_finish = dispatch_mode == 1;
  LowLatencyDispatchResult sent = job.buffer.low_latency_dispatch(
      scenario.x(rank), scenario.topk(rank), scenario.max_tokens, scenario.num_experts, options);
  if (sent.hook.valid()) sent.hook();
  sent.event.wait();
  require(check_low_latency_dispatch(scenario, rank, masked, flags, sent));

  const std::int64_t L = scenario.local_experts();
  std::vector<std::uint16_t> y;
  TensorView x;
  if (zero_copy) {
    x = job.buffer.get_next_low_latency_combine_buffer(sent.handle);
    fill_expert_outputs(scenario, rank, sent, x.data_as<std::uint16_t>());
  } else {
    y.resize(static_cast<std::size_t>(L * scenario.rows_per_expert() * scenario.hidden));
    fill_expert_outputs(scenario, rank, sent, y.data());
    x = TensorView(y.data(), {L, scenario.rows_per_expert(), scenario.hidden}, DType::bf16);
  }
  LowLatencyCombineOptions combine;
  combine.zero_copy = zero_copy;
  combine.return_recv_hook = combine_mode == 0;
  combine.async_finish = combine_mode == 1;
  LowLatencyCombineResult back =
      job.buffer.low_latency_combine(x, scenario.topk(rank), scenario.weights(rank), sent.handle, combine);
  if (back.hook.valid()) back.hook();
  back.event.wait();
  require(check_low_latency_combine(scenario, rank, masked, back.combined_x.data_as<std::uint16_t>()));
}

std::vector<std::int32_t> mask_of(Job& job) {
  std::vector<std::int32_t> status(job.group.world_size());
  job.buffer.low_latency_query_mask_buffer(TensorView(status.data(), {job.group.world_size()}, DType::int32));
  return status;
}

void verify(Job& job, int rounds) {
  const Masked none(job.group.world_size(), false);
  for (int round = 0; round < rounds; ++round)
    round_trip(job, make_low_latency_scenario(shape_of(job.group), job.rng), none);
  worker_common::report_ok(job.group.rank(), "verified " + std::to_string(rounds) + " rounds");
}

void masked_in_turn(Job& job) {
  const int R = job.group.world_size();
  const LowLatencyShapeSpec spec = shape_of(job.group);
  for (int victim = 0; victim < R; ++victim) {
    Masked masked(R, false);
    masked[victim] = true;
    if (job.group.rank() != victim) job.buffer.low_latency_update_mask_buffer(victim, true);
    round_trip(job, make_low_latency_scenario(spec, job.rng), masked);
    if (job.group.rank() != victim && mask_of(job)[victim] != 1)
      fail(Errc::internal, "the mask does not say rank " + std::to_string(victim) + " was skipped");
    job.buffer.low_latency_clean_mask_buffer();
    const LowLatencyScenario scenario = make_low_latency_scenario(spec, job.rng);
    job.buffer.clean_low_latency_buffer(scenario.max_tokens, scenario.hidden, scenario.num_experts);
    round_trip(job, scenario, Masked(R, false));
  }
  worker_common::report_ok(job.group.rank(), "masked in turn");
}

void kill(Job& job, int victim) {
  const int R = job.group.world_size();
  const LowLatencyShapeSpec spec = shape_of(job.group);
  round_trip(job, make_low_latency_scenario(spec, job.rng), Masked(R, false));
  const LowLatencyScenario next = make_low_latency_scenario(spec, job.rng);
  // Every rank has its whole first round before the victim goes: its rows to another node could otherwise
  // still sit in its proxy when it dies, and that round would rightly mask it.
  job.group.barrier("ferry_lowlat_rank/kill/first_round");
  if (job.group.rank() == victim) {
    std::printf("rank %d: dying now\n", victim);
    std::fflush(stdout);
    std::raise(SIGKILL);
  }
  Masked masked(R, false);
  masked[victim] = true;
  using Seconds = std::chrono::duration<double>;
  const auto start = std::chrono::steady_clock::now();
  // Masks the victim within moments, wherever it was: the store names it to every survivor (its connection
  // closed), and their waits for it end then, not after the timeout.
  round_trip(job, next, masked);
  const double first = Seconds(std::chrono::steady_clock::now() - start).count();
  const auto again = std::chrono::steady_clock::now();
  round_trip(job, make_low_latency_scenario(spec, job.rng), masked);  // skips it at once
  const double second = Seconds(std::chrono::steady_clock::now() - again).count();
  if (mask_of(job)[victim] != 1) fail(Errc::internal, "the mask does not say the victim was skipped");
  std::printf("rank %d: masked rank %d after %.2f s, next round %.3f s\n", job.group.rank(), victim, first,
              second);
  // Waiting out the timeout for the dead rank (or for a survivor that waited for it) takes at least that.
  const double timeout = Seconds(kKillTimeout).count();
  if (first >= timeout)
    fail(Errc::internal,
         "the round that met the dead rank took " + std::to_string(first) +
             " s: a wait ran into the timeout instead of hearing of the death from the store");
  // Any wait for the victim would take the whole timeout: the round after must not.
  if (second >= timeout)
    fail(Errc::internal, "the round after the victim was masked took " + std::to_string(second) +
                             " s: it waited for the dead rank again");
  worker_common::report_ok(job.group.rank(), "went on without rank " + std::to_string(victim));
}

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr, "ferry_lowlat_rank: %s\n", why.c_str());
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  auto options = worker_common::read_options(
      argc, argv, 1, {"--scenario", "--seed", "--rounds", "--victim", "--sub-group"}, usage);
  const std::string scenario = options.count("--scenario") ? options["--scenario"] : "verify";
  const int rounds = options.count("--rounds") ? std::atoi(options["--rounds"].c_str()) : 4;
  const int victim = options.count("--victim") ? std::atoi(options["--victim"].c_str()) : -1;
  if (scenario == "kill") std::signal(SIGTERM, SIG_IGN);
  int rank = -1;
  try {
    GroupOptions group_options;
    if (scenario == "kill") group_options.timeout = std::chrono::seconds(6);  // leaving without the victim
    Group job_group = Group::from_env(group_options);
    rank = job_group.rank();
    std::mt19937_64 rng(worker_common::agree_on_seed(job_group, "ferry_lowlat_rank", scenario,
                                                     worker_common::chosen_seed(options)));
    std::optional<Group> sub_group;
    if (options.count("--sub-group") && options["--sub-group"] == "1") {
      if (job_group.local_size() < 2) usage("--sub-group needs at least 2 ranks per node");
      std::vector<int> members;
      for (const RankInfo& info : job_group.ranks())
        if (info.local_rank < job_group.local_size() - 1) members.push_back(info.rank);
      if (job_group.local_rank() == job_group.local_size() - 1) {
        std::printf("job rank %d: not a member\n", rank);
        return 0;
      }
      sub_group.emplace(job_group.split("lowlat", members));
      rank = sub_group->rank();
    }
    Group& group = sub_group ? *sub_group : job_group;
    const LowLatencyShapeSpec spec = shape_of(group);
    LowLatencyConfig config;
    config.num_rdma_bytes = get_low_latency_rdma_size_hint(spec.max_tokens, spec.hidden, group.world_size(),
                                                           spec.experts_per_rank * group.world_size());
    config.timeout = scenario == "kill" ? kKillTimeout : std::chrono::seconds(60);
    LowLatencyBuffer buffer(group, config);
    Job job{group, buffer, rng};
    if (scenario == "verify") {
      verify(job, rounds);
    } else if (scenario == "masked") {
      masked_in_turn(job);
    } else if (scenario == "kill") {
      if (victim < 0 || victim >= group.world_size()) usage("--victim must name a rank");
      kill(job, victim);
    } else {
      usage("unknown scenario " + scenario);
    }
    return 0;
  } catch (const std::exception& error) {
    return worker_common::report_failure(rank, error);
  }
}
