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
  }
  try {
    const auto metrics = pipeline::overlap_metrics(events);
    pipeline::sum_metrics(metrics);
    pipeline::format_overlap_summary(metrics);
  } catch (const ferry::Error&) {
  }
  try {
    std::ostringstream svg;
    pipeline::write_timeline_svg(svg, events, pipeline::SvgOptions{});
  } catch (const ferry::Error&) {
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
    // The reader refuses negative step, micro-batch and chunk numbers, so they survive as they are.
    FUZZ_CHECK(again[i].step == events[i].step);
    FUZZ_CHECK(again[i].micro_batch == events[i].micro_batch);
    FUZZ_CHECK(again[i].chunk == events[i].chunk);
    FUZZ_CHECK(close_enough(again[i].start_us, events[i].start_us));
    FUZZ_CHECK(close_enough(again[i].end_us - again[i].start_us, events[i].end_us - events[i].start_us));
  }
  return 0;
}
