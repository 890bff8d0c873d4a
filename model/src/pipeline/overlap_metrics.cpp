// Overlap metrics of a trace: per (rank, step), how long the expert all-to-all was in flight, how much of it
// compute hid, and how long the rank did neither.
#include <algorithm>
#include <cstdio>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/model/pipeline/trace.hpp"

namespace ferry::model::pipeline {
namespace {

struct Interval {
  double begin = 0, end = 0;
};

// Sorted, disjoint, non-empty intervals covering the same points as the input.
std::vector<Interval> merge(std::vector<Interval> intervals) {
  std::sort(intervals.begin(), intervals.end(),
            [](const Interval& a, const Interval& b) { return a.begin < b.begin; });
  std::vector<Interval> merged;
  for (const Interval& i : intervals) {
    if (i.end <= i.begin) continue;
    if (!merged.empty() && i.begin <= merged.back().end)
      merged.back().end = std::max(merged.back().end, i.end);
    else
      merged.push_back(i);
  }
  return merged;
}

double length(const std::vector<Interval>& merged) {
  double total = 0;
  for (const Interval& i : merged) total += i.end - i.begin;
  return total;
}

// Overlaps shorter than the clock's resolution (steady_clock counts ns) are rounding, not overlap: a Chrome
// trace stores ts and dur, and ts + dur can miss an event's end by an ulp, so that a compute segment seems to
// run a hair into the all-to-all issued at its end.
constexpr double kResolutionUs = 1e-3;

// |a ∩ b| of two merge()d lists.
double intersection(const std::vector<Interval>& a, const std::vector<Interval>& b) {
  double total = 0;
  std::size_t i = 0, j = 0;
  while (i < a.size() && j < b.size()) {
    const double lo = std::max(a[i].begin, b[j].begin), hi = std::min(a[i].end, b[j].end);
    if (hi - lo > kResolutionUs) total += hi - lo;
    if (a[i].end < b[j].end)
      ++i;
    else
      ++j;
  }
  return total;
}

constexpr double kSecondsPerUs = 1e-6;

// The schedule ops whose mean durations the metrics carry, and where.
struct OpSlot {
  const char* name;
  double OverlapMetrics::*seconds;
  int OverlapMetrics::*count;
};
constexpr OpSlot kOps[] = {{"F", &OverlapMetrics::f_s, &OverlapMetrics::f_count},
                           {"B", &OverlapMetrics::b_s, &OverlapMetrics::b_count},
                           {"W", &OverlapMetrics::w_s, &OverlapMetrics::w_count},
                           {"F&B", &OverlapMetrics::fb_s, &OverlapMetrics::fb_count},
                           {"BW", &OverlapMetrics::bw_s, &OverlapMetrics::bw_count}};

const OpSlot* op_slot(const TraceEvent& e) {
  if (e.lane != Lane::ops) return nullptr;
  for (const OpSlot& slot : kOps)
    if (e.name == slot.name) return &slot;
  return nullptr;
}

bool is_step_window(const TraceEvent& e) {
  return e.lane == Lane::ops && e.name == "step";
}

// `events`: one rank's events other than its step windows, sorted by start; `longest_us` the longest of them
// (every event that can reach into the window starts at most that long before it).
OverlapMetrics measure(const std::vector<const TraceEvent*>& events, double longest_us,
                       const TraceEvent& window) {
  OverlapMetrics m;
  m.rank = window.rank;
  m.step = window.step;
  const double lo = window.start_us, hi = window.end_us;
  std::vector<Interval> compute, a2a, pp;
  std::vector<double> op_sums(std::size(kOps), 0.0);
  auto first = std::lower_bound(events.begin(), events.end(), lo - longest_us,
                                [](const TraceEvent* e, double t) { return e->start_us < t; });
  for (auto it = first; it != events.end() && (*it)->start_us <= hi; ++it) {
    const TraceEvent& e = **it;
    const Interval clipped{std::max(e.start_us, lo), std::min(e.end_us, hi)};
    if (const OpSlot* slot = op_slot(e)) {
      // A zero-length op inside the window still happened in this step.
      const bool inside = clipped.end > clipped.begin || (e.start_us == e.end_us && e.start_us >= lo);
      if (!inside) continue;
      op_sums[slot - kOps] += clipped.end - clipped.begin;
      ++(m.*(slot->count));
      continue;
    }
    if (clipped.end <= clipped.begin) continue;
    if (e.lane == Lane::compute)
      compute.push_back(clipped);
    else if (e.lane == Lane::comm && e.category == "a2a")
      a2a.push_back(clipped);
    else if (e.lane == Lane::comm && e.category == "pp")
      pp.push_back(clipped);
  }
  compute = merge(std::move(compute));
  a2a = merge(std::move(a2a));
  pp = merge(std::move(pp));
  const double wall = hi - lo, compute_us = length(compute), a2a_us = length(a2a);
  const double overlapped = intersection(compute, a2a);
  m.wall_s = wall * kSecondsPerUs;
  m.compute_s = compute_us * kSecondsPerUs;
  m.comm_s = a2a_us * kSecondsPerUs;
  m.pp_comm_s = length(pp) * kSecondsPerUs;
  m.overlapped_s = overlapped * kSecondsPerUs;
  m.exposed_comm_s = (a2a_us - overlapped) * kSecondsPerUs;
  m.overlap_ratio = a2a_us > 0 ? overlapped / a2a_us : 0;
  // Computed in µs and converted once, so that a step that is all compute has a bubble of exactly 0.
  m.bubble_s = (wall - (compute_us + a2a_us - overlapped)) * kSecondsPerUs;
  m.bubble_ratio = wall > 0 ? m.bubble_s / m.wall_s : 0;
  for (std::size_t i = 0; i < std::size(kOps); ++i) {
    const int count = m.*(kOps[i].count);
    m.*(kOps[i].seconds) = count > 0 ? op_sums[i] * kSecondsPerUs / count : 0;
  }
  return m;
}

}  // namespace

std::vector<OverlapMetrics> overlap_metrics(const std::vector<TraceEvent>& events) {
  struct RankEvents {
    std::vector<const TraceEvent*> windows, others;
    double longest_us = 0;
  };
  std::map<int, RankEvents> ranks;
  for (const TraceEvent& e : events) {
    RankEvents& r = ranks[e.rank];
    if (is_step_window(e)) {
      r.windows.push_back(&e);
    } else {
      r.others.push_back(&e);
      r.longest_us = std::max(r.longest_us, e.end_us - e.start_us);
    }
  }
  std::vector<OverlapMetrics> out;
  for (auto& [rank, r] : ranks) {
    std::sort(r.windows.begin(), r.windows.end(),
              [](const TraceEvent* a, const TraceEvent* b) { return a->step < b->step; });
    for (std::size_t i = 1; i < r.windows.size(); ++i)
      if (r.windows[i]->step == r.windows[i - 1]->step)
        fail(Errc::invalid_argument, "overlap_metrics: rank " + std::to_string(rank) +
                                         " has two \"step\" events for step " +
                                         std::to_string(r.windows[i]->step) + " (two runs in one trace?)");
    std::stable_sort(r.others.begin(), r.others.end(),
                     [](const TraceEvent* a, const TraceEvent* b) { return a->start_us < b->start_us; });
    for (const TraceEvent* window : r.windows) out.push_back(measure(r.others, r.longest_us, *window));
  }
  std::stable_sort(out.begin(), out.end(), [](const OverlapMetrics& a, const OverlapMetrics& b) {
    return std::pair(a.step, a.rank) < std::pair(b.step, b.rank);
  });
  return out;
}

OverlapMetrics sum_metrics(const std::vector<OverlapMetrics>& metrics) {
  OverlapMetrics total;
  total.rank = metrics.empty() ? -1 : metrics.front().rank;
  total.step = metrics.empty() ? -1 : metrics.front().step;
  std::vector<double> op_sums(std::size(kOps), 0.0);
  for (const OverlapMetrics& m : metrics) {
    if (m.rank != total.rank) total.rank = -1;
    if (m.step != total.step) total.step = -1;
    total.wall_s += m.wall_s;
    total.compute_s += m.compute_s;
    total.comm_s += m.comm_s;
    total.pp_comm_s += m.pp_comm_s;
    total.overlapped_s += m.overlapped_s;
    total.exposed_comm_s += m.exposed_comm_s;
    total.bubble_s += m.bubble_s;
    for (std::size_t i = 0; i < std::size(kOps); ++i) {
      op_sums[i] += m.*(kOps[i].seconds) * m.*(kOps[i].count);
      total.*(kOps[i].count) += m.*(kOps[i].count);
    }
  }
  total.overlap_ratio = total.comm_s > 0 ? total.overlapped_s / total.comm_s : 0;
  total.bubble_ratio = total.wall_s > 0 ? total.bubble_s / total.wall_s : 0;
  for (std::size_t i = 0; i < std::size(kOps); ++i) {
    const int count = total.*(kOps[i].count);
    total.*(kOps[i].seconds) = count > 0 ? op_sums[i] / count : 0;
  }
  return total;
}

void to_json(nlohmann::json& j, const OverlapMetrics& m) {
  nlohmann::json ops = nlohmann::json::object();
  for (const OpSlot& slot : kOps)
    if (m.*(slot.count) > 0) ops[slot.name] = {{"mean_s", m.*(slot.seconds)}, {"count", m.*(slot.count)}};
  j = nlohmann::json{{"rank", m.rank},
                     {"step", m.step},
                     {"wall_s", m.wall_s},
                     {"compute_s", m.compute_s},
                     {"comm_s", m.comm_s},
                     {"pp_comm_s", m.pp_comm_s},
                     {"overlapped_s", m.overlapped_s},
                     {"exposed_comm_s", m.exposed_comm_s},
                     {"overlap_ratio", m.overlap_ratio},
                     {"bubble_s", m.bubble_s},
                     {"bubble_ratio", m.bubble_ratio},
                     {"ops", ops}};
}

namespace {

std::string format(const char* fmt, auto... values) {
  char line[256];
  std::snprintf(line, sizeof line, fmt, values...);
  return line;
}

std::string summary_line(const std::string& label, int steps, const OverlapMetrics& m) {
  return format("%-6s %5d %10.3f %10.3f %10.3f %10.3f %10.3f %8.1f%% %8.1f%%\n", label.c_str(), steps,
                m.wall_s * 1e3, m.compute_s * 1e3, m.comm_s * 1e3, m.exposed_comm_s * 1e3, m.pp_comm_s * 1e3,
                m.overlap_ratio * 100, m.bubble_ratio * 100);
}

// "F 1.234 ms x8, B 2.000 ms x8" over the ops that occurred; empty when none did.
std::string ops_line(const OverlapMetrics& m) {
  std::string out;
  for (const OpSlot& slot : kOps) {
    const int count = m.*(slot.count);
    if (count == 0) continue;
    out += format("%s%s %.3f ms x%d", out.empty() ? "" : ", ", slot.name, m.*(slot.seconds) * 1e3, count);
  }
  return out;
}

}  // namespace

std::string format_overlap_summary(const std::vector<OverlapMetrics>& metrics) {
  if (metrics.empty()) return "no \"step\" events in the trace: nothing to measure\n";
  std::map<int, std::vector<OverlapMetrics>> by_rank;
  for (const OverlapMetrics& m : metrics) by_rank[m.rank].push_back(m);
  std::string out = format("%-6s %5s %10s %10s %10s %10s %10s %9s %9s\n", "rank", "steps", "wall ms",
                           "compute ms", "a2a ms", "exposed ms", "pp ms", "overlap", "bubble");
  for (const auto& [rank, list] : by_rank)
    out += summary_line(std::to_string(rank), static_cast<int>(list.size()), sum_metrics(list));
  const OverlapMetrics total = sum_metrics(metrics);
  out += summary_line("total", static_cast<int>(metrics.size()), total);
  const std::string ops = ops_line(total);
  if (!ops.empty()) out += "mean ops: " + ops + "\n";
  return out;
}

}  // namespace ferry::model::pipeline
