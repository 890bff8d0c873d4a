// `ferry bench`: benchmarks that run on every rank of a job (start them with `ferry launch`).
//
//   ferry launch --nodes 2 --ranks-per-node 1 --netns -- ferry bench transport --sizes 4K..64M --json
//   out.json
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <memory>
#include <string>

#include "bench/dispatch_bench.hpp"
#include "bench/gpu/gpu_bench_command.hpp"
#include "bench/low_latency_bench.hpp"
#include "bench/proxy_bench.hpp"
#include "bench/sizes.hpp"
#include "bench/transport_bench.hpp"
#include "cli/bounds.hpp"
#include "cli/memory_plan.hpp"
#include "cli/output_paths.hpp"
#include "cli/usage.hpp"
#include "commands.hpp"
#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"
#include "ferry/group.hpp"

namespace ferry::tools {
namespace {

struct TransportArgs {
  std::string fabric = "auto";
  std::string sizes = "4K..64M";
  int iters = 0;
  std::string json;
  bool proxy = false;
  int proxy_threads = 1;
  bool no_tcp = false;
  double timeout_s = 100;
};

// The largest message size of --sizes: each rank registers two buffers of it (and TCP sends as much).
constexpr std::size_t kMaxMessageBytes = std::size_t{1} << 30;

std::vector<std::size_t> parse_message_sizes(const std::string& text) {
  auto sizes = parse_size_list(text);
  for (std::size_t size : sizes)
    if (size > kMaxMessageBytes)
      fail(Errc::invalid_argument,
           "--sizes: " + format_size(size) + " is above " + format_size(kMaxMessageBytes));
  return sizes;
}

struct TransportRequest {
  JobEnv job;
  TransportBenchOptions options;
};

// Before any work: the sizes, the job's shape (pairs of ranks), the report's path, the memory.
TransportRequest check_transport(const TransportArgs& args) {
  TransportRequest request;
  TransportBenchOptions& options = request.options;
  options.fabric = transport::parse_fabric_kind(args.fabric);
  options.sizes = parse_message_sizes(args.sizes);
  options.iters = args.iters;
  options.skip_tcp = args.no_tcp;
  options.timeout = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(args.timeout_s));
  request.job = resolve_job_env();
  if (request.job.world_size < 2 || request.job.world_size % 2 != 0)
    fail(Errc::invalid_argument,
         "bench transport pairs rank r with rank r + W/2 and needs an even world size of "
         "at least 2, not " +
             std::to_string(request.job.world_size) + " (run it under `ferry launch --nodes 2`)");
  if (request.job.rank == 0) cli::check_output_file("--json", args.json);
  const auto largest =
      static_cast<std::uint64_t>(*std::max_element(options.sizes.begin(), options.sizes.end()));
  cli::MemoryPlan plan;
  plan.add("fabric buffers", {{"--sizes", largest}, {"buffers", 2}});
  if (!options.skip_tcp) plan.add("TCP buffers", {{"--sizes", largest}, {"buffers", 2}});
  plan.check(cli::usable_memory_bytes(), static_cast<std::uint64_t>(request.job.local_size));
  return request;
}

void run_transport(const TransportArgs& args) {
  const TransportRequest request = cli::before_work([&] { return check_transport(args); });
  const TransportBenchOptions& options = request.options;

  GroupOptions group_options;
  group_options.timeout = options.timeout;
  auto group = Group::from_job(request.job, group_options);
  auto report = run_transport_bench(group, options);

  if (args.proxy) {
    ProxyBenchOptions proxy_options;
    proxy_options.fabric = options.fabric;
    proxy_options.threads = args.proxy_threads;
    proxy_options.timeout = options.timeout;
    report["proxy"] = run_proxy_bench(group, proxy_options);
  }

  if (group.rank() == 0) {
    print_transport_report(report);
    if (args.proxy) print_proxy_report(report["proxy"]);
    if (!args.json.empty()) {
      std::ofstream out(args.json);
      out << report.dump(2) << "\n";
      if (!out) fail(Errc::system, "bench transport: cannot write " + args.json);
      std::printf("wrote %s\n", args.json.c_str());
    }
  }
}

}  // namespace

void register_bench(CLI::App& app, int& exit_code) {
  auto* bench = app.add_subcommand("bench", "Benchmarks; run them on every rank with `ferry launch`");
  bench->require_subcommand(1);
  cli::set_examples(*bench, {
                                "ferry launch --nodes 2 -- ferry bench transport",
                                "ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench dispatch --check",
                                "ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench combine --sweep "
                                "--save-config tuned.json",
                            });

  auto args = std::make_shared<TransportArgs>();
  auto* transport = bench->add_subcommand("transport",
                                          "Fabric put bandwidth and put_signal latency between rank pairs (r "
                                          "<-> r + W/2), next to raw TCP between "
                                          "the same ranks and memcpy");
  transport->add_option("--fabric", args->fabric, "Fabric backend: ucx, verbs, noop or auto")
      ->check(CLI::IsMember({"ucx", "verbs", "noop", "auto"}))
      ->capture_default_str();
  transport
      ->add_option("--sizes", args->sizes,
                   "Message sizes: A..B (powers of two) or a comma list; K/M/G units; at most 1G")
      ->check(cli::parses_with("SIZES", [](const std::string& text) { parse_message_sizes(text); }))
      ->capture_default_str();
  transport->add_option("--iters", args->iters, "Iterations per size and measurement (0: chosen by size)")
      ->check(cli::whole_in(0, 1000000));
  transport->add_option("--json", args->json,
                        "Write the full report (every pair) as JSON to this file (rank 0)");
  transport->add_flag("--proxy", args->proxy, "Also measure proxy command throughput (noop and real fabric)");
  cli::add_count(*transport, "--proxy-threads", args->proxy_threads, 1, 64,
                 "Proxy threads (and producer rings) per rank");
  transport->add_flag("--no-tcp", args->no_tcp, "Skip the raw TCP ceiling");
  transport->add_option("--timeout", args->timeout_s, "Deadline of every wait, in seconds")
      ->check(cli::seconds_up_to())
      ->capture_default_str();
  cli::set_examples(*transport, {
                                    "ferry launch --nodes 2 -- ferry bench transport --sizes 4K..16M",
                                    "ferry launch --nodes 2 --netns --link-gbps 25 -- ferry bench transport "
                                    "--proxy --json transport.json",
                                });
  transport->callback([args, &exit_code] {
    run_transport(*args);
    exit_code = 0;
  });
  register_dispatch_bench(*bench, exit_code);
  register_low_latency_bench(*bench, exit_code);
  register_gpu_bench(*bench, exit_code);
}

}  // namespace ferry::tools
