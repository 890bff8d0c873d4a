// `ferry bench dispatch|combine`: DeepEP-style dispatch and combine of synthetic node-limited routings
// through ferry's Buffer on every rank of the job, timed, counted per path and (with --check) verified
// exactly.
//
//   ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench dispatch --tokens 4096 --hidden 7168 --json
//   d.json ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench combine --fp8 --check ferry launch
//   --nodes 2 --ranks-per-node 2 -- ferry bench dispatch --sweep --save-config tuned.json
#include "bench/dispatch_bench.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bench/dispatch_check.hpp"
#include "bench/dispatch_inputs.hpp"
#include "bench/dispatch_options.hpp"
#include "bench/dispatch_report.hpp"
#include "bench/dispatch_request.hpp"
#include "bench/dispatch_rows.hpp"
#include "bench/dispatch_sweep.hpp"
#include "bench/machine_info.hpp"
#include "bench/progress.hpp"
#include "bench/routing_gen.hpp"
#include "cli/memory_plan.hpp"
#include "cli/output_paths.hpp"
#include "cli/usage.hpp"
#include "ferry/buffer.hpp"
#include "ferry/core/deadline.hpp"
#include "ferry/group.hpp"
#include "ferry/kernels/protocol/numeric.hpp"
#include "ferry/transport/store.hpp"
#include "plot/svg.hpp"

namespace ferry::tools {
namespace {

using bench::dequantized_rows;
using bench::DispatchBenchOptions;
using bench::make_inputs;
using bench::RankInputs;

bench::PathCount per_iter(const PathTraffic& after, const PathTraffic& before, int iters) {
  return {static_cast<double>(after.messages - before.messages) / iters,
          static_cast<double>(after.bytes - before.bytes) / iters};
}

// Everything a run can check before any work (cli::before_work): the job, the routing on its shape, the
// Configs to run (the base one, or every sweep point), the output paths (rank 0 writes them), the memory.
bench::DispatchRequest check_request(const DispatchBenchOptions& o, const bench::SweepArgs& sweep,
                                     bool combine_mode) {
  bench::DispatchRequest request = bench::resolve_request(o);
  if (sweep.enabled)
    request.configs = bench::sweep_configs(request.configs.front(), bench::parse_sweep_grid(sweep));
  if (request.job.rank == 0) {
    cli::check_output_file("--json", o.json);
    if (sweep.enabled) {
      cli::check_output_file("--save-config", sweep.save_config);
      cli::check_output_file("--plot", sweep.plot);
    }
  }
  cli::MemoryPlan plan;
  bench::add_dispatch_memory(plan, o, request, combine_mode);
  plan.check(cli::usable_memory_bytes(), static_cast<std::uint64_t>(request.job.local_size));
  return request;
}

// One job of `ferry bench dispatch|combine`: the group, the routing and this rank's rows, made once;
// measure() runs them through a Buffer of a given Config (a sweep calls it once per point).
class DispatchBenchJob {
 public:
  DispatchBenchJob(const DispatchBenchOptions& o, bool combine_mode, const bench::DispatchRequest& request)
      : o_(o),
        combine_mode_(combine_mode),
        op_(combine_mode ? "combine" : "dispatch"),
        timeout_(bench::dispatch_config(o).timeout),
        group_(make_group(request.job, timeout_)),
        spec_(request.spec) {
    make_inputs(o_, spec_, group_.rank(), in_);
  }

  Group& group() { return group_; }
  const std::string& op() const { return op_; }

  // Collective: a Buffer with `config`, the warm-up, the timed iterations (each timed on its own), the check.
  // Returns the summary of every rank's measurement, on every rank.
  nlohmann::json measure(const Config& config) {
    const int rank = group_.rank(), R = group_.world_size();
    auto buffer = std::make_unique<Buffer>(group_, config);
    const Layout layout = buffer->get_layout(in_.view.topk_idx, o_.experts);

    bench::RankMeasurement m;
    m.rank = rank;
    m.node = group_.node();
    bench::count_routing_rows(spec_, in_.routing, rank, m);
    std::optional<Pending<DispatchResult>> dispatched;
    std::optional<Pending<CombineResult>> combined;
    Tensor y_storage;
    TensorView y;
    auto dispatch_once = [&] {
      dispatched.emplace(buffer->dispatch(in_.view, layout));
      dispatched->wait();
    };
    auto combine_once = [&] {
      combined.emplace(buffer->combine(y, dispatched->wait().handle));
      combined->wait();
    };
    if (combine_mode_) {
      dispatch_once();
      const DispatchResult& got = dispatched->wait();
      if (o_.fp8) y_storage = dequantized_rows(got, o_.hidden);
      y = o_.fp8 ? y_storage.view() : got.recv_x.view();
    }
    for (int i = 0; i < o_.warmup; ++i) combine_mode_ ? combine_once() : dispatch_once();

    group_.barrier("bench/" + op_ + "/start");
    const BufferTraffic before = buffer->traffic();
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < o_.iters; ++i) {
      const auto iteration = std::chrono::steady_clock::now();
      combine_mode_ ? combine_once() : dispatch_once();
      m.iteration_seconds.push_back(seconds_since(iteration));
    }
    m.seconds_per_iter = seconds_since(start) / o_.iters;
    const BufferTraffic after = buffer->traffic();
    const TrafficCounters& a = combine_mode_ ? after.combine : after.dispatch;
    const TrafficCounters& b = combine_mode_ ? before.combine : before.dispatch;
    m.fabric = per_iter(a.fabric, b.fabric, o_.iters);
    m.node_path = per_iter(a.node, b.node, o_.iters);
    m.self = per_iter(a.self, b.self, o_.iters);
    m.fabric_puts = static_cast<double>(a.fabric_puts - b.fabric_puts) / o_.iters;
    m.fabric_signals = static_cast<double>(a.fabric_signals - b.fabric_signals) / o_.iters;
    m.recv_rows = static_cast<double>(dispatched->wait().num_recv_tokens);

    if (o_.check) {
      std::vector<bench::Routing> routings;
      for (int r = 0; r < R; ++r)
        routings.push_back(r == rank ? in_.routing : bench::generate_routing(spec_, r));
      m.check_error = bench::check_dispatch(spec_, routings, rank, o_.hidden, o_.fp8, dispatched->wait());
      if (m.check_error.empty() && combine_mode_) {
        m.check_error = bench::check_combine(spec_, in_.routing, rank, o_.hidden, combined->wait().out);
      }
    }
    combined.reset();
    dispatched.reset();
    buffer.reset();  // collective: every rank is done with the data plane before the report

    const std::string mine = bench::to_json(m).dump();
    auto gathered = group_.all_gather("bench/" + op_ + "/report",
                                      {reinterpret_cast<const std::uint8_t*>(mine.data()), mine.size()});
    std::vector<nlohmann::json> ranks;
    for (const auto& bytes : gathered) ranks.push_back(nlohmann::json::parse(bytes.begin(), bytes.end()));
    DispatchBenchOptions options = o_;
    options.num_sms = config.num_sms;
    bench::BenchHeader header{
        "ferry",
        op_,
        R,
        group_.local_size(),
        combine_mode_ ? static_cast<std::size_t>(2 * o_.hidden) : bench::row_bytes(o_.hidden, o_.fp8),
        options};
    nlohmann::json summary = bench::summarize(header, ranks);
    summary["config"] = nlohmann::json::parse(config.to_json());
    // ferry's promise: each token crosses to each remote node once, in either direction.
    if (o_.check && !summary["fabric_rule"]["within"].get<bool>()) {
      summary["errors"].push_back("fabric carried more rows than the one-crossing-per-node rule allows");
      summary["check"] = "failed";
    }
    return summary;
  }

 private:
  static Group make_group(const JobEnv& job, Duration timeout) {
    GroupOptions group_options;
    group_options.timeout = timeout;
    return Group::from_job(job, group_options);
  }

  DispatchBenchOptions o_;
  bool combine_mode_;
  std::string op_;
  Duration timeout_;
  Group group_;
  bench::RoutingSpec spec_;
  RankInputs in_;
};

// --sweep and its lists (dispatch_sweep.hpp).
void add_sweep_options(CLI::App& command, bench::SweepArgs& args) {
  auto* sweep =
      command.add_flag("--sweep", args.enabled,
                       "Run every combination of --sweep-sms, --sweep-rdma-chunk and --sweep-nvl-chunk; "
                       "the best last");
  command.add_option("--sweep-sms", args.sms, "num_sms values of the sweep (even, at most 1024)")
      ->check(cli::positive_int_list())
      ->needs(sweep)
      ->capture_default_str();
  command.add_option("--sweep-rdma-chunk", args.rdma_chunks, "rdma_chunk values of the sweep")
      ->check(cli::positive_int_list())
      ->needs(sweep)
      ->capture_default_str();
  command.add_option("--sweep-nvl-chunk", args.nvl_chunks, "nvl_chunk values of the sweep")
      ->check(cli::positive_int_list())
      ->needs(sweep)
      ->capture_default_str();
  command
      .add_option("--save-config", args.save_config,
                  "Write the best configuration as a ferry::Config JSON file (rank 0)")
      ->needs(sweep);
  command.add_option("--plot", args.plot, "Write GB/s against num_sms as an SVG plot (rank 0)")->needs(sweep);
}

int run_dispatch_bench(const DispatchBenchOptions& o, bool combine_mode,
                       const bench::DispatchRequest& request) {
  DispatchBenchJob job(o, combine_mode, request);
  const nlohmann::json summary = job.measure(request.configs.front());
  if (job.group().rank() == 0) {
    bench::print_summary(summary);
    if (!o.json.empty()) bench::write_json(summary, o.json);
  }
  return summary["check"] == "failed" ? 1 : 0;
}

int run_dispatch_sweep(const DispatchBenchOptions& o, const bench::SweepArgs& args, bool combine_mode,
                       const bench::DispatchRequest& request) {
  DispatchBenchJob job(o, combine_mode, request);
  Group& group = job.group();
  const bool leader = group.rank() == 0;
  const std::vector<Config>& configs = request.configs;
  ProgressBar progress(configs.size(), leader && ProgressBar::stderr_is_terminal());
  nlohmann::json points = nlohmann::json::array();
  bool failed = false;
  for (std::size_t i = 0; i < configs.size(); ++i) {
    nlohmann::json point;
    // Every rank decides alike: the check depends on the config and the job's shape only.
    if (auto problem = bench::config_problem(configs[i], group.num_nodes(), group.local_size());
        !problem.empty()) {
      point = {{"config", nlohmann::json::parse(configs[i].to_json())}, {"skipped", problem}};
    } else {
      point = job.measure(configs[i]);
      point.erase("per_rank");
      failed |= point["check"] == "failed";
    }
    if (leader) progress.step(bench::format_sweep_point(point, i, configs.size()));
    points.push_back(point);
  }
  progress.finish();
  if (!leader) return failed ? 1 : 0;

  nlohmann::json report = bench::sweep_report(job.op(), points);
  report["date"] = now_iso8601();
  report["machine"] = machine_info();
  std::printf("%s", bench::format_sweep_table(report).c_str());
  std::fflush(stdout);
  if (!args.save_config.empty() && report.contains("best")) {
    Config best = Config::from_json(report["best"]["config"].dump());
    best.timeout = bench::dispatch_config(o).timeout;
    best.save(args.save_config);
    std::printf("wrote the best configuration to %s (ferry::Config::load reads it)\n",
                args.save_config.c_str());
  }
  if (!o.json.empty()) bench::write_json(report, o.json);
  if (!args.plot.empty()) {
    plot::SvgDocument svg = bench::sweep_plot(report, group.num_nodes() > 1);
    svg.save(args.plot);
    std::printf("wrote %s\n", args.plot.c_str());
  }
  std::fflush(stdout);
  return failed || !report.contains("best") ? 1 : 0;
}

}  // namespace

void register_dispatch_bench(CLI::App& bench, int& exit_code) {
  for (const bool combine_mode : {false, true}) {
    auto options = std::make_shared<DispatchBenchOptions>();
    auto* command = bench.add_subcommand(
        combine_mode ? "combine" : "dispatch",
        combine_mode ? "Time combine (after one untimed dispatch) of a synthetic routing on every rank"
                     : "Time dispatch (notify included, layout not) of a synthetic routing on every rank");
    bench::add_dispatch_options(*command, *options);
    auto sweep = std::make_shared<bench::SweepArgs>();
    add_sweep_options(*command, *sweep);
    const std::string name = combine_mode ? "combine" : "dispatch";
    cli::set_examples(
        *command,
        {
            "ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench " + name + " --tokens 1024 --check",
            "ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench " + name + " --fp8 --json " + name +
                ".json",
            "ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench " + name +
                " --sweep --sweep-sms 4,8,16 --save-config tuned.json --plot sweep.svg",
        });
    command->callback([options, sweep, combine_mode, &exit_code] {
      const bench::DispatchRequest request =
          cli::before_work([&] { return check_request(*options, *sweep, combine_mode); });
      exit_code = sweep->enabled ? run_dispatch_sweep(*options, *sweep, combine_mode, request)
                                 : run_dispatch_bench(*options, combine_mode, request);
    });
  }
}

}  // namespace ferry::tools
