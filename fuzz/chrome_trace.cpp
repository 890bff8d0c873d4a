// Fuzzes the Chrome-trace reader and what `ferry trace` does with a file someone hands it: the overlap
// metrics, the summary table and the SVG timeline. A malformed file must end in a ferry::Error naming the
// problem (any other exception, a crash or a sanitizer report is a bug), and a trace that was read must
// survive being written and read again unchanged.
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <sstream>
#include <string_view>
#include <vector>

#include <nlohmann/json.hpp>

#include "ferry/core/error.hpp"
#include "ferry/model/pipeline/trace.hpp"
#include "fuzz_check.hpp"

namespace pipeline = ferry::model::pipeline;

namespace {

bool close_enough(double a, double b) {
  return a == b || std::fabs(a - b) <= 1e-9 * std::max(std::fabs(a), std::fabs(b));
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  std::vector<pipeline::TraceEvent> events;
  try {
    events = pipeline::parse_chrome_trace(text);
  } catch (const ferry::Error&) {
    return 0;
  } catch (const nlohmann::json::out_of_range&) {
    // KNOWN BUG, reported (docs/reliability.md, fuzz/corpus/chrome_trace/crash-number-overflow.json): a
    // number too large for a double (error 406) escapes parse_chrome_trace as nlohmann's exception instead of
    // a ferry::Error naming the file: trace.cpp catches only json::parse_error. Remove this catch once it
    // catches json::exception; the corpus input then guards the fix.
    return 0;
  }
  try {
    const auto metrics = pipeline::overlap_metrics(events);
    pipeline::sum_metrics(metrics);
    pipeline::format_overlap_summary(metrics);
  } catch (const ferry::Error&) {
  }
  // KNOWN BUG, reported (docs/reliability.md, fuzz/corpus/chrome_trace/crash-svg-huge-time.json): with
  // times beyond 2^53 us, t0 + 1 == t0 in write_timeline_svg, the axis range is 0, the tick step 0, and
  // trace_svg.cpp:281 converts -log10(0) = inf to int (undefined behaviour). Drop this guard once the reader
  // or the SVG writer refuses such times by name; the corpus input then guards the fix.
  const bool known_svg_bug = std::any_of(events.begin(), events.end(), [](const pipeline::TraceEvent& e) {
    return std::fabs(e.start_us) >= 1e15 || std::fabs(e.end_us) >= 1e15;
  });
  if (!known_svg_bug) {
    try {
      std::ostringstream svg;
      pipeline::write_timeline_svg(svg, events, pipeline::SvgOptions{});
    } catch (const ferry::Error&) {
    }
  }

  std::ostringstream written;
  try {
    pipeline::write_chrome_trace(written, events);
  } catch (const ferry::Error&) {
    return 0;  // e.g. times that overflow to infinity: refused by name
  }
  const auto again = pipeline::parse_chrome_trace(written.str());
  FUZZ_CHECK(again.size() == events.size());
  for (std::size_t i = 0; i < events.size(); ++i) {
    FUZZ_CHECK(again[i].name == events[i].name);
    FUZZ_CHECK(again[i].category == events[i].category);
    FUZZ_CHECK(again[i].rank == events[i].rank);
    FUZZ_CHECK(again[i].lane == events[i].lane);
    // Any negative step, micro-batch or chunk means "not applicable" and is written as absent (-1). (The
    // reader accepts "step": -2 as is, which the writer then drops: harmless, reported as a nit.)
    FUZZ_CHECK(again[i].step == std::max(events[i].step, -1));
    FUZZ_CHECK(again[i].micro_batch == std::max(events[i].micro_batch, -1));
    FUZZ_CHECK(again[i].chunk == std::max(events[i].chunk, -1));
    FUZZ_CHECK(close_enough(again[i].start_us, events[i].start_us));
    FUZZ_CHECK(close_enough(again[i].end_us - again[i].start_us, events[i].end_us - events[i].start_us));
  }
  return 0;
}
