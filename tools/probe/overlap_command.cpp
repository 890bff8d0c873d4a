// `ferry probe overlap`: the command line of overlap_probe.hpp and schedule_probe.hpp.
#include "probe/overlap_command.hpp"

#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "bench/machine_info.hpp"
#include "cli/lists.hpp"
#include "cli/usage.hpp"
#include "ferry/core/error.hpp"
#include "probe/overlap_probe.hpp"
#include "probe/schedule_probe.hpp"

namespace ferry::tools::probe {
namespace {

namespace pl = model::pipeline;

struct OverlapArgs {
  bench::DispatchBenchOptions comm;
  int gemm_size = 256;
  std::string schedule;  // empty: the GEMM overlap probe
  std::string compute_ms = "4,4,2";
  int pp = 0;             // 0: 1 for `none`, else 4
  int micro_batches = 0;  // 0: 2 x pp
  int pp_rank = 0;
  std::string json;
};

std::vector<double> parse_compute_ms(const std::string& text) {
  auto values = cli::parse_number_list(text, "--compute-ms");
  if (values.size() != 3) {
    fail(Errc::invalid_argument,
         "--compute-ms takes three times F,B,W in ms, not " + std::to_string(values.size()));
  }
  return values;
}

void write_report(const nlohmann::json& report, const std::string& path) {
  std::ofstream out(path);
  out << report.dump(2) << "\n";
  if (!out) fail(Errc::system, "probe overlap: cannot write the JSON report '" + path + "'");
  std::printf("wrote %s\n", path.c_str());
}

int run_overlap(OverlapArgs args) {
  GroupOptions group_options;
  group_options.timeout =
      std::chrono::duration_cast<Duration>(std::chrono::duration<double>(args.comm.timeout_s));
  nlohmann::json report;
  std::string text;
  if (args.schedule.empty()) {
    Group group = Group::from_env(group_options);
    report = run_overlap_probe(group, {args.comm, args.gemm_size});
    if (group.rank() != 0) return 0;
    text = format_overlap_report(report);
  } else {
    ScheduleProbeOptions options;
    options.comm = args.comm;
    options.shape.kind = pl::parse_schedule_kind(args.schedule);
    options.shape.ranks = args.pp > 0 ? args.pp : options.shape.kind == pl::ScheduleKind::none ? 1 : 4;
    options.shape.micro_batches = args.micro_batches > 0 ? args.micro_batches : 2 * options.shape.ranks;
    options.pp_rank = args.pp_rank;
    const auto ms = parse_compute_ms(args.compute_ms);
    options.f_ms = ms[0];
    options.b_ms = ms[1];
    options.w_ms = ms[2];
    validate(options);  // before the group: a bad shape fails alone, at once
    Group group = Group::from_env(group_options);
    report = run_schedule_probe(group, options);
    if (group.rank() != 0) return 0;
    text = format_schedule_report(report);
  }
  report["date"] = now_iso8601();
  report["machine"] = machine_info();
  std::printf("ferry probe overlap (%s)\n%s", machine_info()["hostname"].get<std::string>().c_str(),
              text.c_str());
  if (!args.json.empty()) write_report(report, args.json);
  std::fflush(stdout);
  return 0;
}

}  // namespace

void register_overlap(CLI::App& probe, int& exit_code) {
  auto args = std::make_shared<OverlapArgs>();
  args->comm.tokens = 1024;  // CPU-sized layer by default
  args->comm.hidden = 2048;
  auto* cmd = probe.add_subcommand(
      "overlap",
      "Compute (an SGEMM loop) and dispatch/combine alone and together: each one's slowdown and the overlap; "
      "or, "
      "with --schedule, a pipeline schedule's op order with real dispatch/combine and synthetic compute");
  bench::add_routing_options(*cmd, args->comm);
  cmd->add_option("--round-trips", args->comm.iters, "Dispatch + combine round trips per measurement")
      ->check(CLI::Range(1, 100000))
      ->capture_default_str();
  cmd->add_option("--warmup", args->comm.warmup, "Untimed round trips first")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--gemm-size", args->gemm_size, "m = n = k of the SGEMMs")
      ->check(CLI::Range(8, 16384))
      ->capture_default_str();
  cmd->add_option("--schedule", args->schedule,
                  "Run this schedule's op order: none, 1f1b, dualpipe, dualpipev")
      ->check(CLI::IsMember({"none", "1f1b", "dualpipe", "dualpipev"}));
  cmd->add_option("--compute-ms", args->compute_ms, "With --schedule: synthetic compute of F, B and W, in ms")
      ->check(cli::parses_with("F,B,W", [](const std::string& text) { parse_compute_ms(text); }))
      ->capture_default_str();
  cmd->add_option("--pp", args->pp, "With --schedule: pipeline ranks (default 4; 1 for none)")
      ->check(CLI::Range(1, 1024));
  cmd->add_option("--micro-batches", args->micro_batches,
                  "With --schedule: micro-batches per step (default 2 x pp)")
      ->check(CLI::Range(1, 100000));
  cmd->add_option("--pp-rank", args->pp_rank, "With --schedule: the pipeline rank whose op list the job runs")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  cmd->add_option("--json", args->json, "Write the report as JSON to this file (rank 0)");
  cli::set_examples(
      *cmd, {
                "ferry launch --nodes 2 --ranks-per-node 2 -- ferry probe overlap --num-sms 8",
                "ferry launch --nodes 2 --ranks-per-node 2 -- ferry probe overlap --gemm-size 512 "
                "--tokens 4096 --hidden 7168 --json overlap.json",
                "ferry launch --nodes 2 --ranks-per-node 2 -- ferry probe overlap --schedule dualpipe "
                "--pp 4 --compute-ms 4,4,2",
                "ferry launch --nodes 2 --ranks-per-node 2 -- ferry probe overlap --schedule 1f1b "
                "--compute-ms 4,8,2",
            });
  cmd->callback([args, &exit_code] { exit_code = run_overlap(*args); });
}

}  // namespace ferry::tools::probe
