#include "probe/schedule_probe.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <map>
#include <thread>

#include "ferry/core/error.hpp"
#include "probe/moe_traffic.hpp"

namespace ferry::tools::probe {
namespace {

namespace pl = model::pipeline;
using Clock = std::chrono::steady_clock;

void compute(double ms) {
  std::this_thread::sleep_for(std::chrono::duration<double, std::milli>(ms));
}

double ms_since(Clock::time_point start) {
  return std::chrono::duration<double, std::milli>(Clock::now() - start).count();
}

// Runs one rank's op list and times each op.
class OpRunner {
 public:
  OpRunner(MoeTraffic& traffic, const ScheduleProbeOptions& options) : traffic_(traffic), o_(options) {}

  // One chunk's MoE layer with `ms` of compute split around its dispatch and its combine.
  void layer(double ms) {
    compute(ms / 2);
    auto dispatched = traffic_.dispatch();
    const DispatchResult& got = dispatched.wait();
    compute(ms / 2);
    traffic_.combine(got).wait();
  }

  // DualPipe's F&B: every all-to-all of one chunk in flight while the other chunk computes.
  void overlapped_pair() {
    compute(o_.f_ms / 2);
    auto dispatch_f = traffic_.dispatch();
    compute(o_.b_ms / 2);
    const DispatchResult& got_f = dispatch_f.wait();
    auto dispatch_b = traffic_.dispatch();
    compute(o_.f_ms / 2);
    const DispatchResult& got_b = dispatch_b.wait();
    auto combine_f = traffic_.combine(got_f);
    compute(o_.b_ms / 2);
    combine_f.wait();
    traffic_.combine(got_b).wait();
  }

  // Runs one op; returns its wall time in ms.
  double run(const pl::Op& op) {
    const auto start = Clock::now();
    switch (op.kind) {
      case pl::OpKind::F:
        layer(o_.f_ms);
        break;
      case pl::OpKind::B:
        layer(o_.b_ms);
        break;
      case pl::OpKind::W:
        compute(o_.w_ms);
        break;
      case pl::OpKind::BW:
        layer(o_.b_ms);
        compute(o_.w_ms);
        break;
      case pl::OpKind::FB:
        overlapped_pair();
        break;
    }
    return ms_since(start);
  }

 private:
  MoeTraffic& traffic_;
  const ScheduleProbeOptions& o_;
};

// Communication round trips each op kind carries (one per MoE layer).
int round_trips_of(pl::OpKind kind) {
  switch (kind) {
    case pl::OpKind::W:
      return 0;
    case pl::OpKind::FB:
      return 2;
    default:
      return 1;
  }
}

}  // namespace

void validate(const ScheduleProbeOptions& options) {
  pl::validate(options.shape);
  if (options.pp_rank < 0 || options.pp_rank >= options.shape.ranks) {
    fail(Errc::invalid_argument, "--pp-rank " + std::to_string(options.pp_rank) + " is not a rank of a " +
                                     std::to_string(options.shape.ranks) + "-rank pipeline");
  }
  for (double ms : {options.f_ms, options.b_ms, options.w_ms}) {
    if (!(ms >= 0 && ms <= 60000))
      fail(Errc::invalid_argument, "--compute-ms: every time must be in [0, 60000] ms");
  }
}

nlohmann::json simulate_step(const pl::ScheduleShape& shape, const pl::OpCosts& costs) {
  const pl::Simulation sim = pl::simulate(shape, costs);
  const double worst = *std::max_element(sim.bubble.begin(), sim.bubble.end());
  return {{"makespan_ms", sim.makespan},
          {"busy_ms", sim.busy},
          {"bubble_ms", sim.bubble},
          {"bubble_share", sim.makespan > 0 ? worst / sim.makespan : 0.0}};
}

nlohmann::json run_schedule_probe(Group& group, const ScheduleProbeOptions& options) {
  validate(options);
  MoeTraffic traffic(group, options.comm);
  for (int i = 0; i < options.comm.warmup; ++i) traffic.round_trip();
  const double round_trip_ms = traffic.time_round_trips(options.comm.iters, "probe/schedule/alone") * 1e3;

  const std::vector<pl::Op> ops = pl::rank_schedule(options.shape, options.pp_rank);
  OpRunner runner(traffic, options);
  // One untimed step first: F&B is the first op that holds two operations' results at once, and the first time
  // it does, their outputs are fresh memory (the block cache has one set); first touch of that memory cost
  // 50-80 ms per F&B on the 2-core VM, which inflated F&B's mean over a step's three F&Bs from ~50 to ~89 ms.
  if (options.comm.warmup > 0) {
    group.barrier("probe/schedule/warmup");
    for (const pl::Op& op : ops) runner.run(op);
  }
  group.barrier("probe/schedule/run");
  std::map<std::string, std::pair<int, double>> per_kind;  // kind -> (count, total ms) on this rank
  const auto start = Clock::now();
  for (const pl::Op& op : ops) {
    auto& [count, total_ms] = per_kind[pl::to_string(op.kind)];
    ++count;
    total_ms += runner.run(op);
  }
  const double step_ms = ms_since(start);

  nlohmann::json mine = {{"step_ms", step_ms}, {"round_trip_ms", round_trip_ms}};
  for (const auto& [kind, entry] : per_kind)
    mine["ops"][kind] = {{"count", entry.first}, {"total_ms", entry.second}};
  const std::string text = mine.dump();
  auto all = group.all_gather("probe/schedule/report",
                              {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});

  // Means over the ranks: every rank ran the same ops.
  const double ranks = static_cast<double>(all.size());
  double mean_step = 0, mean_round_trip = 0;
  std::map<std::string, double> mean_op;
  std::map<std::string, int> counts;
  for (const auto& blob : all) {
    const auto r = nlohmann::json::parse(blob.begin(), blob.end());
    mean_step += r["step_ms"].get<double>() / ranks;
    mean_round_trip += r["round_trip_ms"].get<double>() / ranks;
    for (const auto& [kind, entry] : r["ops"].items()) {
      counts[kind] = entry["count"];
      mean_op[kind] += entry["total_ms"].get<double>() / entry["count"].get<double>() / ranks;
    }
  }
  const std::map<std::string, std::pair<pl::OpKind, double>> compute_of = {
      {"F", {pl::OpKind::F, options.f_ms}},
      {"B", {pl::OpKind::B, options.b_ms}},
      {"W", {pl::OpKind::W, options.w_ms}},
      {"BW", {pl::OpKind::BW, options.b_ms + options.w_ms}},
      {"F&B", {pl::OpKind::FB, options.f_ms + options.b_ms}}};
  nlohmann::json ops_json = nlohmann::json::object();
  for (const auto& [kind, ms] : mean_op) {
    const auto& [op_kind, compute_ms] = compute_of.at(kind);
    const double comm_ms = round_trips_of(op_kind) * mean_round_trip;
    ops_json[kind] = {{"count", counts[kind]},
                      {"mean_ms", ms},
                      {"compute_ms", compute_ms},
                      {"comm_alone_ms", comm_ms},
                      {"exposed_comm_ms", ms - compute_ms},
                      {"hidden_share", comm_ms > 0 ? 1 - (ms - compute_ms) / comm_ms : 0.0}};
  }

  // Op costs for the simulator: measured where this rank's list has the kind, else compute plus the
  // communication it would carry unhidden (the kind is then never used by this rank, but maybe by others).
  auto measured = [&](const char* kind, double otherwise) {
    return mean_op.count(kind) ? mean_op.at(kind) : otherwise;
  };
  pl::OpCosts costs;
  costs.F = measured("F", options.f_ms + mean_round_trip);
  costs.W = measured("W", options.w_ms);
  costs.B = measured("B", mean_op.count("BW") ? mean_op.at("BW") - costs.W : options.b_ms + mean_round_trip);
  costs.FB = measured("F&B", costs.F + costs.B);
  pl::OpCosts free_comm{options.f_ms, options.b_ms, options.w_ms, options.f_ms + options.b_ms};

  return {{"probe", "schedule"},
          {"schedule", pl::to_string(options.shape.kind)},
          {"pp", options.shape.ranks},
          {"micro_batches", options.shape.micro_batches},
          {"pp_rank", options.pp_rank},
          {"compute_ms", {{"F", options.f_ms}, {"B", options.b_ms}, {"W", options.w_ms}}},
          {"round_trip_ms", mean_round_trip},
          {"step_ms", mean_step},
          {"ops", ops_json},
          {"costs_ms", {{"F", costs.F}, {"B", costs.B}, {"W", costs.W}, {"FB", costs.FB}}},
          {"simulated", simulate_step(options.shape, costs)},
          {"free_communication", simulate_step(options.shape, free_comm)},
          {"published_bubble_ms", pl::published_bubble(options.shape, costs)}};
}

std::string format_schedule_report(const nlohmann::json& r) {
  std::string out;
  char line[320];
  std::snprintf(line, sizeof line,
                "schedule %s, %d pipeline ranks, %d micro-batches: the group ran pipeline rank %d's ops with "
                "compute F %.2f, B %.2f, W %.2f ms (timed waits)\n",
                r["schedule"].get<std::string>().c_str(), r["pp"].get<int>(), r["micro_batches"].get<int>(),
                r["pp_rank"].get<int>(), r["compute_ms"]["F"].get<double>(),
                r["compute_ms"]["B"].get<double>(), r["compute_ms"]["W"].get<double>());
  out += line;
  std::snprintf(line, sizeof line, "one dispatch + combine alone: %.3f ms; the rank's step: %.2f ms\n",
                r["round_trip_ms"].get<double>(), r["step_ms"].get<double>());
  out += line;
  std::snprintf(line, sizeof line, "%6s %6s %10s %11s %13s %14s %8s\n", "op", "count", "mean ms",
                "compute ms", "comm alone ms", "exposed comm ms", "hidden");
  out += line;
  for (const auto& [kind, o] : r["ops"].items()) {
    const bool has_comm = o["comm_alone_ms"].get<double>() > 0;
    std::snprintf(
        line, sizeof line, "%6s %6d %10.3f %11.3f %13.3f %14.3f %7s\n", kind.c_str(), o["count"].get<int>(),
        o["mean_ms"].get<double>(), o["compute_ms"].get<double>(), o["comm_alone_ms"].get<double>(),
        o["exposed_comm_ms"].get<double>(),
        has_comm
            ? (std::to_string(static_cast<int>(std::lround(100 * o["hidden_share"].get<double>()))) + "%")
                  .c_str()
            : "-");
    out += line;
  }
  const auto& sim = r["simulated"];
  const auto& free = r["free_communication"];
  std::snprintf(
      line, sizeof line,
      "simulated step with these op times: %.2f ms, worst bubble %.0f%% of it (formula: %.2f ms); with free "
      "communication: %.2f ms, worst bubble %.0f%%\n",
      sim["makespan_ms"].get<double>(), 100 * sim["bubble_share"].get<double>(),
      r["published_bubble_ms"].get<double>(), free["makespan_ms"].get<double>(),
      100 * free["bubble_share"].get<double>());
  out += line;
  return out;
}

}  // namespace ferry::tools::probe
