// Timeline traces of the pipeline executor: what each rank's threads were doing when, how much of the expert
// all-to-all hid behind compute, and pictures of it.
//
//   TraceRecorder rec(rank, /*enabled=*/true);
//   const double t0 = rec.now_us();
//   ... run the attention of micro-batch 3 ...
//   rec.add({"attn(F)", "compute", 0, Lane::compute, t0, rec.now_us(), step, 3, chunk});
//   write_chrome_trace("trace.json", rec.events());       // open in Perfetto or chrome://tracing
//   std::puts(format_overlap_summary(overlap_metrics(rec.events())).c_str());
//
// `ferry trace FILE [--svg OUT] [--step N]` does the last two on a written trace (several ranks' traces are
// one file once their event lists are concatenated: the rank travels in every event).
#pragma once

#include <chrono>
#include <cstdint>
#include <iosfwd>
#include <mutex>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace ferry::model::pipeline {

// The three rows of a rank's timeline. In the Chrome trace the lane is the tid (0, 1, 2), named "compute",
// "comm" and "ops".
enum class Lane { compute, comm, ops };

// "compute", "comm" or "ops".
std::string_view lane_name(Lane lane);

struct TraceEvent {
  // compute: "attn(F)" "mlp(F)" "attn(B)" "mlp(B)" "mlp(W)" "attn(W)" "head(F)" "head(B)" "embed(F)" ...;
  // comm: "dispatch(F)" "combine(F)" "dispatch(B)" "combine(B)" "pp-send" "pp-recv";
  // ops: "F" "B" "W" "F&B" "BW" "step" "grad-reduce" "optimizer"
  std::string name;
  // "compute", "a2a" (expert all-to-all), "pp" (pipeline send/recv), "op", "step". The overlap metrics
  // tell expert all-to-all from pipeline traffic by this, not by the name.
  std::string category;
  int rank = 0;  // Chrome pid
  Lane lane = Lane::compute;
  double start_us = 0, end_us = 0;              // microseconds since the recorder's epoch
  int step = -1, micro_batch = -1, chunk = -1;  // -1: not applicable (written to "args" when >= 0)
};

// Collects one rank's events. add() is thread-safe: a rank's compute and communication threads record at
// once. A disabled recorder's add() does nothing, so the executor can record unconditionally.
class TraceRecorder {
 public:
  // Ranks of one job should share the epoch (or start theirs at the same moment) so their timelines line up.
  TraceRecorder(int rank, bool enabled,
                std::chrono::steady_clock::time_point epoch = std::chrono::steady_clock::now());
  // Movable so that it can live in containers; moving one that another thread is adding to is a bug.
  TraceRecorder(TraceRecorder&& other) noexcept;
  TraceRecorder& operator=(TraceRecorder&& other) noexcept;

  bool enabled() const { return enabled_; }
  int rank() const { return rank_; }
  // t relative to the epoch, in µs.
  double us(std::chrono::steady_clock::time_point t) const;
  double now_us() const { return us(std::chrono::steady_clock::now()); }

  // Records the event with event.rank set to this recorder's rank.
  void add(TraceEvent event);
  // A copy of the events so far, sorted by start (ties keep the order of add()).
  std::vector<TraceEvent> events() const;
  void clear();

 private:
  int rank_;
  bool enabled_;
  std::chrono::steady_clock::time_point epoch_;
  mutable std::mutex mutex_;
  std::vector<TraceEvent> events_;
};

// ---- Chrome trace event format -------------------------------------------------------------------------
//
// {"traceEvents":[...],"displayTimeUnit":"ms"}: one complete event per TraceEvent ("ph":"X", ts and dur in
// µs, pid = rank, tid = lane, "cat" = category, "args" {step, micro_batch, chunk} where >= 0), plus "M"
// metadata events naming every pid "rank N" and its three tids, so each rank shows all three rows in
// Perfetto and chrome://tracing even when one of them stayed empty.
void write_chrome_trace(std::ostream& out, const std::vector<TraceEvent>& events);
// Throws system naming the path when it cannot be written.
void write_chrome_trace(const std::string& path, const std::vector<TraceEvent>& events);

// The inverse of write_chrome_trace (end_us = ts + dur, so equal up to the rounding of that sum). Accepts the
// object form and the bare-array form of the format; skips "M" events. Throws invalid_argument naming the
// path (or "chrome trace" for text) and what is malformed: not JSON, no "traceEvents" array, an event without
// a numeric ts/dur or an integer pid/tid, a tid that is not a lane, a phase other than "X" and "M" (begin/end
// pairs are not supported), JSON nested deeper than kMaxTraceDepth, a file larger than kMaxTraceBytes
// (refused unread). A file that cannot be opened throws invalid_argument too. Messages quote at most a short
// excerpt of what they refuse.
inline constexpr int kMaxTraceDepth = 32;  // a ferry trace nests 4 deep: {traceEvents: [{args: {...}}]}
inline constexpr std::uint64_t kMaxTraceBytes = std::uint64_t{1} << 30;
std::vector<TraceEvent> read_chrome_trace(const std::string& path);
std::vector<TraceEvent> parse_chrome_trace(std::string_view json_text);

// ---- Overlap metrics ------------------------------------------------------------------------------------

// Overlap of one rank in one step. The step's window is that rank's ops-lane event named "step" with that
// step number; every other interval of the rank is clipped to it (by time, whatever step it is tagged
// with). Unions are taken per lane, so overlapping events count once. Pieces of a2a ∩ compute shorter than
// 1 ns (the clock's resolution) are not counted: they are the rounding of a trace's ts + dur.
struct OverlapMetrics {
  int rank = 0, step = 0;
  double wall_s = 0;          // the step window
  double compute_s = 0;       // |∪ compute-lane intervals|
  double comm_s = 0;          // |∪ comm-lane intervals of category "a2a"|: expert all-to-all in flight
  double pp_comm_s = 0;       // |∪ comm-lane intervals of category "pp"|
  double overlapped_s = 0;    // |a2a ∩ compute|
  double exposed_comm_s = 0;  // |a2a − compute|
  double overlap_ratio = 0;   // overlapped_s / comm_s (0 when comm_s == 0)
  // wall_s − |compute ∪ a2a|: waiting for pipeline neighbours, the optimizer's all-reduce, ...
  double bubble_s = 0;
  double bubble_ratio = 0;  // bubble_s / wall_s
  // Mean durations (s, clipped to the window) and counts of the ops-lane schedule ops that overlap the
  // window: "F", "B", "W", "F&B", "BW".
  double f_s = 0, b_s = 0, w_s = 0, fb_s = 0, bw_s = 0;
  int f_count = 0, b_count = 0, w_count = 0, fb_count = 0, bw_count = 0;
};

// Every (rank, step) that has a "step" event, sorted by (step, rank). Throws invalid_argument when a rank
// has two "step" events for one step (two runs' traces in one file).
std::vector<OverlapMetrics> overlap_metrics(const std::vector<TraceEvent>& events);

// Totals over several metrics: the seconds summed, the ratios recomputed from the sums, the op means weighted
// by their counts. rank and step are the common value, or -1 where the metrics disagree (or there are none).
OverlapMetrics sum_metrics(const std::vector<OverlapMetrics>& metrics);

// The one JSON form of OverlapMetrics, written by `ferry train --json` and `ferry trace --json` alike: every
// field under its own name ("rank", "step" (-1 where summed metrics disagree), "wall_s", "compute_s",
// "comm_s", "pp_comm_s", "overlapped_s", "exposed_comm_s", "overlap_ratio", "bubble_s", "bubble_ratio"), and
// "ops": {"F": {"mean_s", "count"}, ...} for the schedule ops that occurred.
void to_json(nlohmann::json& j, const OverlapMetrics& m);

// A readable table: one line per rank (summed over its steps) and a total line, with wall, compute, a2a in
// flight, exposed a2a and pp time in ms, overlap % and bubble %.
std::string format_overlap_summary(const std::vector<OverlapMetrics>& metrics);

// ---- SVG timeline ---------------------------------------------------------------------------------------

struct SvgOptions {
  int step = -1;  // draw only this step's window, from its first rank's start to its last's end (-1: all)
  int width_px = 1400;
  std::string title;
};

// One band per rank with three rows (compute, comm, ops), a time axis in ms with ticks, a colour per kind of
// event (attn, mlp, W, head/embed, dispatch, combine, pp, ops F/B/W/F&B/BW), F-direction events lighter
// than B ones, a legend, short labels inside wide boxes and <title> tooltips (name, step, micro-batch,
// chunk, duration). Every drawn event is one <rect class="ev">; a "step" event shades its rank's whole band.
// Throws invalid_argument when options.step is set and no rank has that step, or width_px is too small.
void write_timeline_svg(std::ostream& out, const std::vector<TraceEvent>& events, const SvgOptions& options);
// Throws system naming the path when it cannot be written.
void write_timeline_svg(const std::string& path, const std::vector<TraceEvent>& events,
                        const SvgOptions& options);

}  // namespace ferry::model::pipeline
