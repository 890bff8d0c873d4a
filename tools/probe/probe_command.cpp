// `ferry probe fabric|overlap`: the command lines of fabric_probe.hpp, overlap_probe.hpp and
// schedule_probe.hpp.
//
//   ferry launch --nodes 4 --ranks-per-node 8 -- ferry probe fabric --json fabric.json --plot fabric.svg
//   ferry launch --nodes 2 --ranks-per-node 2 -- ferry probe overlap --num-sms 8
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "bench/dispatch_request.hpp"
#include "bench/machine_info.hpp"
#include "bench/sizes.hpp"
#include "cli/bounds.hpp"
#include "cli/lists.hpp"
#include "cli/memory_plan.hpp"
#include "cli/output_paths.hpp"
#include "cli/usage.hpp"
#include "commands.hpp"
#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "probe/fabric_probe.hpp"
#include "probe/overlap_probe.hpp"
#include "probe/schedule_probe.hpp"

namespace ferry::tools {
namespace {

namespace pl = model::pipeline;

struct FabricArgs {
  std::string fabric = "auto";
  std::string level = "auto";
  std::string size = "1M";
  std::string bytes = "64M";
  int latency_iters = 100;
  double fraction = 0.8;
  std::string json;
  std::string plot;
  bool fail_on_slow = false;
  double timeout_s = 100;
};

void write_text(const std::string& path, const std::string& text, const char* command, const char* what) {
  std::ofstream out(path);
  out << text;
  if (!out) fail(Errc::system, std::string(command) + ": cannot write the " + what + " '" + path + "'");
  std::printf("wrote %s\n", path.c_str());
}

// The largest put (--size) and the most bytes per link direction (--bytes) of the fabric probe, and the most
// puts --bytes / --size may ask for.
constexpr std::size_t kMaxPutBytes = std::size_t{1} << 30;
constexpr std::size_t kMaxLinkBytes = std::size_t{64} << 30;
constexpr std::size_t kMaxPuts = std::size_t{1} << 20;

// A size flag's value, at most `max`. Throws invalid_argument naming the flag.
std::size_t size_up_to(const std::string& flag, const std::string& text, std::size_t max) {
  const std::size_t bytes = parse_size(text);
  if (bytes > max) fail(Errc::invalid_argument, flag + ": " + text + " is above " + format_size(max));
  return bytes;
}

CLI::Validator size_up_to_check(const std::string& flag, std::size_t max) {
  return cli::parses_with("SIZE", [flag, max](const std::string& text) { size_up_to(flag, text, max); });
}

struct FabricRequest {
  JobEnv job;
  probe::FabricProbeOptions options;
};

FabricRequest check_fabric(const FabricArgs& args) {
  FabricRequest request;
  probe::FabricProbeOptions& options = request.options;
  options.fabric = transport::parse_fabric_kind(args.fabric);
  options.level = args.level;
  options.message_bytes = size_up_to("--size", args.size, kMaxPutBytes);
  options.link_bytes = size_up_to("--bytes", args.bytes, kMaxLinkBytes);
  if (options.link_bytes / options.message_bytes > kMaxPuts)
    fail(Errc::invalid_argument, "--bytes / --size: " + args.bytes + " / " + args.size + " is " +
                                     std::to_string(options.link_bytes / options.message_bytes) +
                                     " puts per link, more than " + std::to_string(kMaxPuts));
  options.latency_iters = args.latency_iters;
  options.timeout = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(args.timeout_s));
  request.job = resolve_job_env();
  if (request.job.rank == 0) {
    cli::check_output_file("--json", args.json);
    cli::check_output_file("--plot", args.plot);
  }
  probe::resolve_level(options.level, request.job.num_nodes(), request.job.world_size);  // two endpoints?
  cli::MemoryPlan plan;
  plan.add("send and receive buffers", {{"--size", options.message_bytes}, {"buffers", 2}});
  plan.check(cli::usable_memory_bytes(), static_cast<std::uint64_t>(request.job.local_size));
  return request;
}

int run_fabric(const FabricArgs& args) {
  const FabricRequest request = cli::before_work([&] { return check_fabric(args); });
  const probe::FabricProbeOptions& options = request.options;
  GroupOptions group_options;
  group_options.timeout = options.timeout;
  auto group = Group::from_job(request.job, group_options);
  const auto matrix = probe::run_fabric_probe(group, options);
  const auto findings = probe::analyze(matrix, args.fraction);
  if (group.rank() == 0) {
    std::printf("ferry probe fabric: %d ranks = %d node(s) x %d, %zu %ss, %d rounds, %s puts, %s per link\n",
                group.world_size(), group.num_nodes(), group.local_size(), matrix.endpoints.size(),
                matrix.level.c_str(), matrix.rounds, format_size(matrix.message_bytes).c_str(),
                format_size(matrix.links.empty() ? 0 : matrix.links[0].bytes).c_str());
    std::printf("%s", probe::format_text(matrix, findings).c_str());
    std::fflush(stdout);
    if (!args.json.empty()) {
      nlohmann::json report = probe::to_json(matrix, findings);
      report["probe"] = "fabric";
      report["date"] = now_iso8601();
      report["machine"] = machine_info();
      report["job"] = {{"world_size", group.world_size()},
                       {"nodes", group.num_nodes()},
                       {"ranks_per_node", group.local_size()},
                       {"launcher", to_string(group.job().launcher)}};
      report["fabric"] = transport::to_string(options.fabric);
      write_text(args.json, report.dump(2) + "\n", "probe fabric", "JSON report");
    }
    if (!args.plot.empty()) {
      const std::string title = "ferry probe fabric: put GB/s, " + std::to_string(matrix.endpoints.size()) +
                                " " + matrix.level + "s, " + now_iso8601();
      write_text(args.plot, probe::heatmap_svg(matrix, findings, title), "probe fabric", "heatmap");
    }
  }
  return args.fail_on_slow && !findings.slow_links.empty() ? 1 : 0;
}

void register_fabric(CLI::App& probe, int& exit_code) {
  auto args = std::make_shared<FabricArgs>();
  auto* cmd = probe.add_subcommand(
      "fabric",
      "Put bandwidth and latency of every node pair (each node sending to one peer at a time), as a matrix; "
      "names the links and nodes below a fraction of the reference");
  cmd->add_option("--fabric", args->fabric, "Fabric backend: ucx, verbs or auto")
      ->check(CLI::IsMember({"ucx", "verbs", "auto"}))
      ->capture_default_str();
  cmd->add_option("--level", args->level,
                  "Endpoints: node (local rank 0 of each node), rank (every rank), auto (node with 2+ nodes)")
      ->check(CLI::IsMember({"auto", "node", "rank"}))
      ->capture_default_str();
  cmd->add_option("--size", args->size, "Bytes per put (K/M/G units, at most 1G)")
      ->check(size_up_to_check("--size", kMaxPutBytes))
      ->capture_default_str();
  cmd->add_option("--bytes", args->bytes, "Timed bytes per link direction (whole puts; at most 64G)")
      ->check(size_up_to_check("--bytes", kMaxLinkBytes))
      ->capture_default_str();
  cli::add_count(*cmd, "--latency-iters", args->latency_iters, 1, 1000000,
                 "Timed put_signal ping-pongs per link direction");
  cmd->add_option("--fraction", args->fraction,
                  "A link below this fraction of the reference (median of each node's best link) is slow")
      ->check(cli::number_in(0.01, 1.0))
      ->capture_default_str();
  cmd->add_option("--json", args->json, "Write the matrix, the links and the verdict as JSON (rank 0)");
  cmd->add_option("--plot", args->plot, "Write the bandwidth matrix as an SVG heatmap (rank 0)");
  cmd->add_flag("--fail-on-slow", args->fail_on_slow, "Exit 1 when a slow link is found");
  cmd->add_option("--timeout", args->timeout_s, "Deadline of every wait, in seconds")
      ->check(cli::seconds_up_to())
      ->capture_default_str();
  cli::set_examples(*cmd,
                    {
                        "ferry launch --nodes 4 -- ferry probe fabric",
                        "ferry launch --nodes 3 --netns --link-gbps 10,10,1 -- ferry probe fabric --bytes "
                        "16M --plot fabric.svg",
                        "mpirun -np 16 --map-by ppr:8:node -x FERRY_SECRET -x MASTER_ADDR -x MASTER_PORT "
                        "ferry probe fabric --fail-on-slow",
                        "ferry launch --ranks-per-node 4 -- ferry probe fabric --level rank   # one node",
                    });
  cmd->callback([args, &exit_code] { exit_code = run_fabric(*args); });
}

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

probe::ScheduleProbeOptions schedule_options(const OverlapArgs& args) {
  probe::ScheduleProbeOptions options;
  options.comm = args.comm;
  options.shape.kind = pl::parse_schedule_kind(args.schedule);
  options.shape.ranks = args.pp > 0 ? args.pp : options.shape.kind == pl::ScheduleKind::none ? 1 : 4;
  options.shape.micro_batches = args.micro_batches > 0 ? args.micro_batches : 2 * options.shape.ranks;
  options.pp_rank = args.pp_rank;
  const auto ms = parse_compute_ms(args.compute_ms);
  options.f_ms = ms[0];
  options.b_ms = ms[1];
  options.w_ms = ms[2];
  return options;
}

// Before any work: the schedule's shape, the routing on the job's shape, the report's path, the memory of
// the round trips (and of the GEMMs).
bench::DispatchRequest check_overlap(const OverlapArgs& args) {
  if (!args.schedule.empty()) probe::validate(schedule_options(args));
  bench::DispatchRequest request = bench::resolve_request(args.comm);
  if (request.job.rank == 0) cli::check_output_file("--json", args.json);
  cli::MemoryPlan plan;
  bench::add_dispatch_memory(plan, args.comm, request, true);
  if (args.schedule.empty()) {
    const auto n = static_cast<std::uint64_t>(args.gemm_size);
    plan.add("GEMM matrices", {{"--gemm-size", n}, {"--gemm-size", n}, {"matrices", 3}, {"B", 4}});
  }
  plan.check(cli::usable_memory_bytes(), static_cast<std::uint64_t>(request.job.local_size));
  return request;
}

int run_overlap(OverlapArgs args) {
  const bench::DispatchRequest request = cli::before_work([&] { return check_overlap(args); });
  GroupOptions group_options;
  group_options.timeout =
      std::chrono::duration_cast<Duration>(std::chrono::duration<double>(args.comm.timeout_s));
  nlohmann::json report;
  std::string text;
  if (args.schedule.empty()) {
    Group group = Group::from_job(request.job, group_options);
    report = probe::run_overlap_probe(group, {args.comm, args.gemm_size});
    if (group.rank() != 0) return 0;
    text = probe::format_overlap_report(report);
  } else {
    Group group = Group::from_job(request.job, group_options);
    report = probe::run_schedule_probe(group, schedule_options(args));
    if (group.rank() != 0) return 0;
    text = probe::format_schedule_report(report);
  }
  report["date"] = now_iso8601();
  report["machine"] = machine_info();
  std::printf("ferry probe overlap (%s)\n%s", machine_info()["hostname"].get<std::string>().c_str(),
              text.c_str());
  if (!args.json.empty()) write_text(args.json, report.dump(2) + "\n", "probe overlap", "JSON report");
  std::fflush(stdout);
  return 0;
}

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
  cli::add_count(*cmd, "--round-trips", args->comm.iters, 1, 100000,
                 "Dispatch + combine round trips per measurement");
  cli::add_count(*cmd, "--warmup", args->comm.warmup, 0, 100000, "Untimed round trips first");
  cli::add_count(*cmd, "--gemm-size", args->gemm_size, 8, 16384, "m = n = k of the SGEMMs");
  cmd->add_option("--schedule", args->schedule,
                  "Run this schedule's op order: none, 1f1b, dualpipe, dualpipev")
      ->check(CLI::IsMember({"none", "1f1b", "dualpipe", "dualpipev"}));
  cmd->add_option("--compute-ms", args->compute_ms, "With --schedule: synthetic compute of F, B and W, in ms")
      ->check(cli::parses_with("F,B,W", [](const std::string& text) { parse_compute_ms(text); }))
      ->capture_default_str();
  cmd->add_option("--pp", args->pp, "With --schedule: pipeline ranks (default 4; 1 for none)")
      ->check(cli::whole_in(1, 1024));
  cmd->add_option("--micro-batches", args->micro_batches,
                  "With --schedule: micro-batches per step (default 2 x pp)")
      ->check(cli::whole_in(1, 100000));
  cli::add_count(*cmd, "--pp-rank", args->pp_rank, 0, 1023,
                 "With --schedule: the pipeline rank whose op list the job runs");
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

}  // namespace

void register_probe(CLI::App& app, int& exit_code) {
  auto* probe =
      app.add_subcommand("probe", "Probes of the cluster: fabric health matrix, compute/comm overlap");
  probe->require_subcommand(1);
  cli::set_examples(*probe, {
                                "ferry launch --nodes 3 --netns --link-gbps 10,10,1 -- ferry probe fabric",
                                "ferry launch --nodes 2 --ranks-per-node 2 -- ferry probe overlap",
                                "ferry launch --nodes 2 --ranks-per-node 2 -- ferry probe overlap --schedule "
                                "dualpipe --compute-ms 4,4,2",
                            });
  register_fabric(*probe, exit_code);
  register_overlap(*probe, exit_code);
}

}  // namespace ferry::tools
