// The timeline as a standalone SVG: one band per rank (compute, comm and ops rows) under a time axis in ms.
//
// Only events are drawn with <rect>; backgrounds and legend swatches are <path>s, so that a reader (or a
// test) can count the events in the picture.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <ostream>
#include <set>
#include <string>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/model/pipeline/trace.hpp"

namespace ferry::model::pipeline {
namespace {

constexpr double kLeft = 110, kRight = 20;  // room for "rank N" / row names, and for the last tick label
constexpr double kRowHeight = 20, kRowGap = 2, kBandGap = 14;
constexpr double kBandHeight = 3 * kRowHeight + 2 * kRowGap;
constexpr double kLegendRow = 18, kLegendItem = 150;
constexpr double kCharWidth = 6.2;  // of the 10 px label font, generously: a label must not spill out

std::string escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string num(double v) {
  char text[32];
  std::snprintf(text, sizeof text, "%.2f", v);
  return text;
}

struct Rgb {
  int r, g, b;
};

std::string hex(Rgb c) {
  char text[8];
  std::snprintf(text, sizeof text, "#%02x%02x%02x", c.r, c.g, c.b);
  return text;
}

// F-direction events share their kind's hue, washed towards white.
Rgb lighter(Rgb c) {
  auto mix = [](int v) { return static_cast<int>(std::lround(v + (255 - v) * 0.5)); };
  return {mix(c.r), mix(c.g), mix(c.b)};
}

bool dark(Rgb c) {
  return 0.299 * c.r + 0.587 * c.g + 0.114 * c.b < 140;
}

// The kinds of events, in legend order. The schedule ops are greys, so that they do not read as attention.
struct Kind {
  const char* label;
  Rgb colour;
};
enum KindId {
  attn,
  mlp,
  wgrad,
  head,
  other_compute,
  dispatch,
  combine,
  pp,
  other_comm,
  op_f,
  op_b,
  op_w,
  op_fb,
  op_bw,
  grad_reduce,
  optimizer,
  other_op,
  step_window,
  kKinds
};
constexpr Kind kKindTable[kKinds] = {{"attn", {31, 119, 180}},
                                     {"mlp", {44, 160, 44}},
                                     {"W (weight grad)", {148, 103, 189}},
                                     {"head / embed", {140, 86, 75}},
                                     {"other compute", {188, 170, 164}},
                                     {"dispatch", {255, 127, 14}},
                                     {"combine", {214, 39, 40}},
                                     {"pp send/recv", {23, 190, 207}},
                                     {"other comm", {219, 219, 141}},
                                     {"op F", {189, 189, 189}},
                                     {"op B", {99, 99, 99}},
                                     {"op W", {148, 103, 189}},
                                     {"op F&B", {227, 119, 194}},
                                     {"op BW", {123, 65, 115}},
                                     {"grad-reduce", {188, 189, 34}},
                                     {"optimizer", {140, 109, 49}},
                                     {"other op", {188, 170, 164}},
                                     {"step", {236, 236, 236}}};

bool starts_with(const std::string& s, std::string_view prefix) {
  return s.rfind(prefix, 0) == 0;
}
bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

KindId kind_of(const TraceEvent& e) {
  const std::string& n = e.name;
  switch (e.lane) {
    case Lane::compute:
      if (ends_with(n, "(W)")) return wgrad;
      if (starts_with(n, "attn")) return attn;
      if (starts_with(n, "mlp") || starts_with(n, "moe") || starts_with(n, "expert")) return mlp;
      if (starts_with(n, "head") || starts_with(n, "embed") || starts_with(n, "mtp")) return head;
      return other_compute;
    case Lane::comm:
      if (starts_with(n, "dispatch")) return dispatch;
      if (starts_with(n, "combine")) return combine;
      if (starts_with(n, "pp") || e.category == "pp") return pp;
      return other_comm;
    case Lane::ops:
      if (n == "F") return op_f;
      if (n == "B") return op_b;
      if (n == "W") return op_w;
      if (n == "F&B") return op_fb;
      if (n == "BW") return op_bw;
      if (n == "step") return step_window;
      if (n == "grad-reduce") return grad_reduce;
      if (n == "optimizer") return optimizer;
      return other_op;
  }
  return other_op;
}

Rgb colour_of(const TraceEvent& e, KindId kind) {
  const Rgb base = kKindTable[kind].colour;
  return e.name.find("(F)") != std::string::npos ? lighter(base) : base;
}

// A tick spacing of 1, 2 or 5 × 10^k ms giving about `target` ticks over the range.
double tick_step_ms(double range_ms, int target) {
  const double raw = range_ms / target;
  const double magnitude = std::pow(10.0, std::floor(std::log10(raw)));
  for (double m : {1.0, 2.0, 5.0})
    if (m * magnitude >= raw) return m * magnitude;
  return 10 * magnitude;
}

std::string tooltip(const TraceEvent& e) {
  std::string t = e.name;
  if (!e.category.empty()) t += " [" + e.category + "]";
  if (e.step >= 0) t += ", step " + std::to_string(e.step);
  if (e.micro_batch >= 0) t += ", micro-batch " + std::to_string(e.micro_batch);
  if (e.chunk >= 0) t += ", chunk " + std::to_string(e.chunk);
  char times[96];
  std::snprintf(times, sizeof times, ": %.3f ms (%.3f to %.3f ms)", (e.end_us - e.start_us) / 1e3,
                e.start_us / 1e3, e.end_us / 1e3);
  return t + times;
}

// The longest of "name mb", "name", "mb" that fits in `width` px; empty when none does.
std::string label_for(const TraceEvent& e, double width) {
  auto fits = [&](const std::string& s) { return s.size() * kCharWidth + 4 <= width; };
  const std::string mb = e.micro_batch >= 0 ? std::to_string(e.micro_batch) : "";
  if (!mb.empty() && fits(e.name + " " + mb)) return e.name + " " + mb;
  if (fits(e.name)) return e.name;
  if (!mb.empty() && fits(mb)) return mb;
  return {};
}

std::string box_path(double x, double y, double w, double h) {
  return "M" + num(x) + " " + num(y) + "h" + num(w) + "v" + num(h) + "h" + num(-w) + "z";
}

}  // namespace

void write_timeline_svg(std::ostream& out, const std::vector<TraceEvent>& events, const SvgOptions& options) {
  const double width = options.width_px;
  if (width < kLeft + kRight + 100)
    fail(Errc::invalid_argument, "write_timeline_svg: width_px " + std::to_string(options.width_px) +
                                     " leaves no room for the timeline (at least " +
                                     std::to_string(static_cast<int>(kLeft + kRight + 100)) + ")");

  // The drawn time range: the chosen step's windows on every rank, or everything.
  double t0 = std::numeric_limits<double>::infinity(), t1 = -t0;
  for (const TraceEvent& e : events) {
    const bool counts =
        options.step < 0 || (e.lane == Lane::ops && e.name == "step" && e.step == options.step);
    if (!counts) continue;
    t0 = std::min(t0, e.start_us);
    t1 = std::max(t1, e.end_us);
  }
  if (options.step >= 0 && t0 > t1)
    fail(Errc::invalid_argument,
         "write_timeline_svg: the trace has no \"step\" event for step " + std::to_string(options.step));
  if (t0 > t1) t0 = t1 = 0;   // no events: an empty picture
  if (t1 <= t0) t1 = t0 + 1;  // one instant: give it a µs of width
  const double plot_width = width - kLeft - kRight;
  auto x_of = [&](double t) { return kLeft + (t - t0) / (t1 - t0) * plot_width; };

  std::set<int> rank_set;
  for (const TraceEvent& e : events) rank_set.insert(e.rank);
  const std::vector<int> ranks(rank_set.begin(), rank_set.end());
  auto band_index = [&](int rank) {
    return static_cast<int>(std::lower_bound(ranks.begin(), ranks.end(), rank) - ranks.begin());
  };

  std::vector<const TraceEvent*> drawn;
  std::vector<bool> kind_seen(kKinds, false);
  for (const TraceEvent& e : events) {
    if (e.end_us < t0 || e.start_us > t1) continue;
    drawn.push_back(&e);
    kind_seen[kind_of(e)] = true;
  }
  // Step windows go first so that they shade the band behind the events.
  std::stable_partition(drawn.begin(), drawn.end(),
                        [](const TraceEvent* e) { return kind_of(*e) == step_window; });

  std::string title = options.title;
  if (title.empty())
    title = "ferry pipeline timeline" + (options.step >= 0 ? ", step " + std::to_string(options.step) : "");
  const double title_h = 28, axis_h = 22;
  const double plot_top = title_h + axis_h;
  const double bands_h = ranks.empty() ? kRowHeight : ranks.size() * (kBandHeight + kBandGap) - kBandGap;
  const int legend_items = static_cast<int>(std::count(kind_seen.begin(), kind_seen.end(), true));
  const int per_row = std::max(1, static_cast<int>((width - kLeft) / kLegendItem));
  const int legend_rows = (legend_items + per_row - 1) / per_row + 1;  // + the note on F and B
  const double legend_top = plot_top + bands_h + 16;
  const double height = legend_top + legend_rows * kLegendRow + 8;

  out << "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" << options.width_px << "\" height=\""
      << static_cast<int>(std::ceil(height)) << "\" viewBox=\"0 0 " << options.width_px << " "
      << static_cast<int>(std::ceil(height)) << "\" font-family=\"sans-serif\" font-size=\"11\">\n";
  out << "<path d=\"" << box_path(0, 0, width, height) << "\" fill=\"#ffffff\"/>\n";
  out << "<text x=\"" << num(kLeft) << "\" y=\"18\" font-size=\"14\" font-weight=\"bold\">" << escape(title)
      << "</text>\n";

  // Bands and row names.
  for (std::size_t b = 0; b < ranks.size(); ++b) {
    const double y = plot_top + b * (kBandHeight + kBandGap);
    out << "<text x=\"6\" y=\"" << num(y + kBandHeight / 2 + 4) << "\" font-weight=\"bold\">rank " << ranks[b]
        << "</text>\n";
    for (int row = 0; row < 3; ++row) {
      const double ry = y + row * (kRowHeight + kRowGap);
      out << "<path d=\"" << box_path(kLeft, ry, plot_width, kRowHeight) << "\" fill=\"#f7f7f7\"/>\n";
      out << "<text x=\"" << num(kLeft - 6) << "\" y=\"" << num(ry + kRowHeight / 2 + 4)
          << "\" text-anchor=\"end\" fill=\"#555555\">" << lane_name(static_cast<Lane>(row)) << "</text>\n";
    }
  }
  if (ranks.empty())
    out << "<text x=\"" << num(kLeft) << "\" y=\"" << num(plot_top + 14) << "\">no events</text>\n";

  // Time axis: ticks and grid lines at round ms values.
  const double range_ms = (t1 - t0) / 1e3;
  const double tick = tick_step_ms(range_ms, std::max(2, static_cast<int>(plot_width / 110)));
  const int decimals = std::max(0, static_cast<int>(-std::floor(std::log10(tick) + 1e-9)));
  const double axis_y = plot_top - 6;
  out << "<g stroke=\"#cccccc\" stroke-width=\"1\">\n";
  out << "<line x1=\"" << num(kLeft) << "\" y1=\"" << num(axis_y) << "\" x2=\"" << num(kLeft + plot_width)
      << "\" y2=\"" << num(axis_y) << "\" stroke=\"#555555\"/>\n";
  std::string tick_labels;
  // Ticks by index, not by accumulating `tick`: the sum would drift off the round values.
  const auto first_tick = static_cast<long long>(std::ceil(t0 / 1e3 / tick - 1e-9));
  for (long long k = first_tick; k * tick <= t1 / 1e3 + tick * 1e-9; ++k) {
    const double ms = k * tick;
    const double x = x_of(ms * 1e3);
    out << "<line x1=\"" << num(x) << "\" y1=\"" << num(axis_y - 4) << "\" x2=\"" << num(x) << "\" y2=\""
        << num(plot_top + bands_h) << "\"/>\n";
    char label[32];
    std::snprintf(label, sizeof label, "%.*f", decimals, std::abs(ms) < tick * 1e-6 ? 0.0 : ms);
    tick_labels += "<text x=\"" + num(x) + "\" y=\"" + num(axis_y - 7) + "\" text-anchor=\"middle\">" +
                   label + "</text>\n";
  }
  out << "</g>\n<g fill=\"#333333\">\n" << tick_labels;
  // At the far left: the first tick's label is centred on the plot's edge.
  out << "<text x=\"6\" y=\"" << num(axis_y - 7) << "\">time (ms)</text>\n";
  out << "</g>\n";

  // Events: a box each, with a tooltip, and a label where it fits.
  out << "<g font-size=\"10\">\n";
  for (const TraceEvent* e : drawn) {
    const KindId kind = kind_of(*e);
    const Rgb colour = colour_of(*e, kind);
    const double band_y = plot_top + band_index(e->rank) * (kBandHeight + kBandGap);
    const double x = x_of(std::max(e->start_us, t0));
    const double w = std::max(x_of(std::min(e->end_us, t1)) - x, 0.5);  // an instant still shows
    double y = band_y + static_cast<int>(e->lane) * (kRowHeight + kRowGap), h = kRowHeight;
    if (kind == step_window) {
      y = band_y - 3;
      h = kBandHeight + 6;
    }
    out << "<rect class=\"ev\" x=\"" << num(x) << "\" y=\"" << num(y) << "\" width=\"" << num(w)
        << "\" height=\"" << num(h) << "\" fill=\"" << hex(colour) << "\"";
    if (kind == step_window)
      out << " fill-opacity=\"0.6\" stroke=\"#999999\" stroke-dasharray=\"4 3\"";
    else
      out << " stroke=\"#ffffff\" stroke-width=\"0.5\"";
    out << "><title>" << escape(tooltip(*e)) << "</title></rect>\n";
    if (kind == step_window) continue;
    const std::string label = label_for(*e, w);
    if (label.empty()) continue;
    out << "<text x=\"" << num(x + w / 2) << "\" y=\"" << num(y + h / 2 + 3.5)
        << "\" text-anchor=\"middle\" fill=\"" << (dark(colour) ? "#ffffff" : "#000000")
        << "\" pointer-events=\"none\">" << escape(label) << "</text>\n";
  }
  out << "</g>\n";

  // Legend: the kinds present, then how to read F and B.
  out << "<g font-size=\"11\">\n";
  int item = 0;
  for (int k = 0; k < kKinds; ++k) {
    if (!kind_seen[k]) continue;
    const double x = kLeft + (item % per_row) * kLegendItem, y = legend_top + (item / per_row) * kLegendRow;
    out << "<path d=\"" << box_path(x, y, 14, 12) << "\" fill=\"" << hex(kKindTable[k].colour)
        << "\" stroke=\"#999999\" stroke-width=\"0.5\"/>\n";
    out << "<text x=\"" << num(x + 19) << "\" y=\"" << num(y + 10) << "\">" << escape(kKindTable[k].label)
        << "</text>\n";
    ++item;
  }
  const double note_y = legend_top + (legend_rows - 1) * kLegendRow + 10;
  out << "<text x=\"" << num(kLeft) << "\" y=\"" << num(note_y)
      << "\" fill=\"#555555\">forward (F) events are drawn lighter than backward (B) ones; hover a box for "
         "its "
         "details</text>\n";
  out << "</g>\n</svg>\n";
}

void write_timeline_svg(const std::string& path, const std::vector<TraceEvent>& events,
                        const SvgOptions& options) {
  std::ofstream out(path);
  if (!out) fail(Errc::system, "write_timeline_svg: cannot open " + path + " for writing");
  write_timeline_svg(out, events, options);
  out.flush();
  if (!out) fail(Errc::system, "write_timeline_svg: cannot write " + path);
}

}  // namespace ferry::model::pipeline
