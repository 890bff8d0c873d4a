// `ferry probe overlap --schedule dualpipe|1f1b|...`: a pipeline schedule's op order run with real
// dispatch/combine and a synthetic compute, before anyone ports a model. It answers what overlap and bubble
// that schedule would reach on this fabric.
//
// Every rank of the job is one expert-parallel group running the op list of one pipeline rank (--pp-rank of
// a --pp rank pipeline, model/pipeline/schedule.hpp), so the group issues the same collectives in the same
// order. Each chunk's work is one MoE layer:
//   F  = compute F/2, dispatch, compute F/2, combine
//   B  = compute B/2, dispatch (combine's backward), compute B/2, combine (dispatch's backward)
//   W  = compute W;  BW = B then W
//   FB = DualPipe's overlapped pair, on one thread: each all-to-all of one chunk is issued, then the other
//        chunk's next compute runs while it is in flight:
//          f1 | D(f) ∥ b1 | D(b) ∥ f2 | C(f) ∥ b2 | C(b)
// Compute is a timed wait (sleep): on the CPU that leaves the cores to communication, as a GPU's compute SMs
// leave the communication SMs theirs. Transfers between pipeline stages are not sent.
//
// Results: every op kind's mean time and how much of it was communication left exposed (time beyond its
// compute), the share of the F&B pairs' communication that was hidden, and the step the schedule's simulator
// (pipeline::simulate) makes of the measured op times: makespan and bubble per pipeline rank, next to the
// same step with free communication (compute only) and the DualPipe paper's bubble formula.
#pragma once

#include <nlohmann/json.hpp>
#include <string>

#include "bench/dispatch_options.hpp"
#include "ferry/group.hpp"
#include "ferry/model/pipeline/schedule.hpp"

namespace ferry::tools::probe {

struct ScheduleProbeOptions {
  bench::DispatchBenchOptions comm;  // the layer's routing and sizes; comm.iters = round trips timed alone
  model::pipeline::ScheduleShape shape;
  int pp_rank = 0;                      // whose op list the group runs
  double f_ms = 4, b_ms = 4, w_ms = 2;  // synthetic compute per op kind
};

// Throws Errc::invalid_argument naming the field when the shape cannot be scheduled or pp_rank is out of
// range.
void validate(const ScheduleProbeOptions& options);

// Collective. The report (see above) on every rank.
nlohmann::json run_schedule_probe(Group& group, const ScheduleProbeOptions& options);

// What rank 0 prints.
std::string format_schedule_report(const nlohmann::json& report);

// The simulated step for op costs in ms (shared with tests): {"makespan_ms", "busy_ms": [...], "bubble_ms":
// [...], "bubble_share": bubble / makespan of the worst rank}.
nlohmann::json simulate_step(const model::pipeline::ScheduleShape& shape,
                             const model::pipeline::OpCosts& costs);

}  // namespace ferry::tools::probe
