// `ferry bench`: benchmarks that run on every rank of a job (start them with `ferry launch`).
//
//   ferry launch --nodes 2 --ranks-per-node 1 --netns -- ferry bench transport --sizes 4K..64M --json
//   out.json
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

void run_transport(const TransportArgs& args) {
  TransportBenchOptions options;
  options.fabric = transport::parse_fabric_kind(args.fabric);
  options.sizes = parse_size_list(args.sizes);
  options.iters = args.iters;
  options.skip_tcp = args.no_tcp;
  options.timeout = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(args.timeout_s));

  GroupOptions group_options;
  group_options.timeout = options.timeout;
  auto group = Group::from_env(group_options);
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
      ->add_option("--sizes", args->sizes, "Message sizes: A..B (powers of two) or a comma list; K/M/G units")
      ->check(cli::size_list())
      ->capture_default_str();
  transport->add_option("--iters", args->iters, "Iterations per size and measurement (0: chosen by size)")
      ->check(CLI::NonNegativeNumber);
  transport->add_option("--json", args->json,
                        "Write the full report (every pair) as JSON to this file (rank 0)");
  transport->add_flag("--proxy", args->proxy, "Also measure proxy command throughput (noop and real fabric)");
  transport->add_option("--proxy-threads", args->proxy_threads, "Proxy threads (and producer rings) per rank")
      ->check(CLI::Range(1, 64))
      ->capture_default_str();
  transport->add_flag("--no-tcp", args->no_tcp, "Skip the raw TCP ceiling");
  transport->add_option("--timeout", args->timeout_s, "Deadline of every wait, in seconds")
      ->check(CLI::PositiveNumber)
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
