// `ferry trace`: reads a Chrome trace written by the pipeline executor, prints how much of the expert
// all-to-all compute hid on every rank, and draws the timeline.
//
//   ferry trace trace.json                          # per-rank overlap table
//   ferry trace trace.json --svg trace.svg --step 3 # and step 3's timeline as an SVG
//   ferry trace trace.json --json                   # the metrics of every (rank, step) as JSON
#include <cstdio>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "cli/bounds.hpp"
#include "cli/output_paths.hpp"
#include "cli/usage.hpp"
#include "commands.hpp"
#include "ferry/core/error.hpp"
#include "ferry/model/pipeline/trace.hpp"

namespace ferry::tools {
namespace {

namespace pipeline = model::pipeline;

struct TraceArgs {
  std::string file;
  std::string svg;
  int step = -1;
  std::string title;
  bool json = false;
};

struct TraceInput {
  std::vector<pipeline::TraceEvent> events;
  std::vector<pipeline::OverlapMetrics> metrics;  // of --step only, when given
};

// Before any work (drawing, printing): where the SVG goes, the trace itself, the step asked for.
TraceInput check_trace(const TraceArgs& args) {
  cli::check_output_file("--svg", args.svg);
  TraceInput input;
  input.events = pipeline::read_chrome_trace(args.file);
  input.metrics = pipeline::overlap_metrics(input.events);
  if (args.step >= 0) {
    std::erase_if(input.metrics, [&](const pipeline::OverlapMetrics& m) { return m.step != args.step; });
    if (input.metrics.empty())
      fail(Errc::invalid_argument,
           "--step: " + args.file + " has no \"step\" event for step " + std::to_string(args.step));
  }
  return input;
}

void run_trace(const TraceArgs& args) {
  const TraceInput input = cli::before_work([&] { return check_trace(args); });
  const std::vector<pipeline::TraceEvent>& events = input.events;
  const std::vector<pipeline::OverlapMetrics>& metrics = input.metrics;

  if (args.json) {
    std::map<int, std::vector<pipeline::OverlapMetrics>> by_rank;
    nlohmann::json steps = nlohmann::json::array(), ranks = nlohmann::json::array();
    for (const pipeline::OverlapMetrics& m : metrics) {
      steps.push_back(m);
      by_rank[m.rank].push_back(m);
    }
    for (const auto& [rank, list] : by_rank) ranks.push_back(pipeline::sum_metrics(list));
    const nlohmann::json out{{"file", args.file},
                             {"events", events.size()},
                             {"steps", steps},
                             {"ranks", ranks},
                             {"total", pipeline::sum_metrics(metrics)}};
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    std::set<int> ranks;
    for (const pipeline::TraceEvent& e : events) ranks.insert(e.rank);
    std::printf("%s: %zu events on %zu rank(s)%s\n", args.file.c_str(), events.size(), ranks.size(),
                args.step >= 0 ? (", step " + std::to_string(args.step)).c_str() : "");
    std::printf("%s", pipeline::format_overlap_summary(metrics).c_str());
  }

  if (!args.svg.empty()) {
    pipeline::SvgOptions options;
    options.step = args.step;
    options.title = args.title.empty() ? args.file : args.title;
    pipeline::write_timeline_svg(args.svg, events, options);
    // stderr under --json, so that stdout stays one JSON document.
    std::fprintf(args.json ? stderr : stdout, "wrote %s\n", args.svg.c_str());
  }
}

}  // namespace

void register_trace(CLI::App& app, int& exit_code) {
  auto args = std::make_shared<TraceArgs>();
  auto* trace = app.add_subcommand(
      "trace", "Summarize a pipeline trace (compute / all-to-all overlap per rank) and draw its timeline");
  trace->add_option("file", args->file, "Chrome trace JSON written by the pipeline executor (at most 1 GiB)")
      ->required();
  trace->add_option("--svg", args->svg, "Also write the timeline as an SVG to this file");
  trace->add_option("--step", args->step, "Only this step (summary and SVG)")
      ->check(cli::whole_in(0, 1000000000));
  trace->add_option("--title", args->title, "Title of the SVG (default: the trace's file name)");
  trace->add_flag("--json", args->json,
                  "Print the metrics of every (rank, step) as JSON instead of the table");
  trace->callback([args, &exit_code] {
    run_trace(*args);
    exit_code = 0;
  });
}

}  // namespace ferry::tools
