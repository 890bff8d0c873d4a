// `ferry launch`: the command line of the launcher (launcher.hpp does the work).
#include <memory>

#include "cli/bounds.hpp"
#include "cli/lists.hpp"
#include "cli/usage.hpp"
#include "commands.hpp"
#include "launch/launcher.hpp"

namespace ferry::tools {
namespace {

// The longest --timeout of a job: a year (0 means no limit at all).
constexpr long kMaxJobSeconds = 365L * 24 * 3600;

}  // namespace

void register_launch(CLI::App& app, int& exit_code) {
  struct Parsed {
    launch::LaunchOptions options;
    std::string link_gbps;
    double drop_rate = 0;
    long timeout_s = 600;
    double grace_s = 3;
    bool no_prefix = false;
  };
  auto parsed = std::make_shared<Parsed>();
  auto* cmd = app.add_subcommand("launch",
                                 "Run --nodes x --ranks-per-node copies of CMD as one ferry job on this "
                                 "machine; with --netns as an emulated "
                                 "cluster (one network, IPC and UTS namespace per node)");
  cli::add_count(*cmd, "--nodes", parsed->options.nodes, 1, 1024, "Number of (emulated) nodes");
  cli::add_count(*cmd, "--ranks-per-node", parsed->options.ranks_per_node, 1, 1024,
                 "Ranks (processes) per node");
  auto* netns =
      cmd->add_flag("--netns", parsed->options.netns,
                    "One network namespace per node joined by veth links to a bridge (needs root and "
                    "iproute2); also a private IPC namespace and hostname node<i> per node");
  cmd->add_option("--link-gbps", parsed->link_gbps,
                  "With --netns: shape the node links (both directions, tc tbf) to G Gbit/s; one rate for "
                  "every node, or one per node (10,10,1: node 2 is slow)")
      ->check(cli::positive_number_list())
      ->needs(netns);
  cmd->add_option("--drop-rate", parsed->drop_rate,
                  "With --netns: drop each packet a node sends on its link with probability P (nftables), to "
                  "see a job survive a lossy network; the launcher reports the drops at the end")
      ->check(cli::number_in(0.000001, 0.999999))
      ->needs(netns);
  cli::add_count(*cmd, "--timeout", parsed->timeout_s, 0, kMaxJobSeconds,
                 "Stop the job and exit 124 after S seconds (0: no limit; at most a year)");
  cmd->add_option(
         "--grace", parsed->grace_s,
         "Seconds between SIGTERM and SIGKILL when the job is stopped (a rank failed, a signal, the timeout)")
      ->check(cli::number_in(0.0, 3600.0))
      ->capture_default_str();
  cmd->add_flag("--keep-going", parsed->options.keep_going,
                "A rank that fails does not stop the others (for jobs that go on without a dead rank, as the "
                "low-latency mode does); the exit status is still the first failed rank's");
  cmd->add_flag("--no-prefix", parsed->no_prefix, "Do not prefix the ranks' output lines with [r<rank>]");
  // After `--` every word belongs to the command, even those that look like options (sh -c ...).
  cmd->add_option("command", parsed->options.command, "The command every rank runs (put it after --)")
      ->required();

  cli::set_examples(*cmd,
                    {
                        "ferry launch --nodes 2 --ranks-per-node 2 -- ferry topo",
                        "ferry launch --nodes 2 --ranks-per-node 4 --netns --link-gbps 25 -- ferry bench "
                        "transport",
                        "ferry launch --nodes 3 --netns --link-gbps 10,10,1 -- ferry probe fabric",
                        "ferry launch --nodes 2 --netns --drop-rate 0.01 -- ferry bench dispatch --check",
                        "ferry launch --nodes 2 -- sh -c 'echo $FERRY_RANK of $FERRY_WORLD_SIZE'",
                    });
  cmd->callback([parsed, cmd, &exit_code] {
    auto options = parsed->options;
    if (cmd->count("--link-gbps") > 0)
      options.link_gbps = cli::parse_number_list(parsed->link_gbps, "--link-gbps");
    if (cmd->count("--drop-rate") > 0) options.drop_rate = parsed->drop_rate;
    options.timeout = std::chrono::seconds(parsed->timeout_s);
    options.grace = std::chrono::milliseconds(static_cast<long>(parsed->grace_s * 1000));
    options.prefix_output = !parsed->no_prefix;
    exit_code = launch::run_launch(options);
  });
}

}  // namespace ferry::tools
