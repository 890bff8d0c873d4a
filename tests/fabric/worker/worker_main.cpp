// fabric_worker SCENARIO [--fabric ucx|verbs|noop] [--seed N] [--rounds N] [--timeout S] [--tag TEXT]
//
// One rank of a fabric test; run it under `ferry launch`. Prints "<scenario> ok" and exits 0 when every check
// passed; prints "rank R: FAILED: <why>" and exits 1 otherwise. The seed defaults to FERRY_TEST_SEED or a
// random one and is always printed, so any failure can be replayed. --tag is ignored (tests use it to find
// leftovers).
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <random>
#include <string>

#include "ferry/core/error.hpp"
#include "ferry/runtime/group_peers.hpp"
#include "scenarios.hpp"
#include "worker_common.hpp"

namespace {

using Scenario = void (*)(const fabric_worker::Context&);

const std::map<std::string, Scenario>& scenarios() {
  static const std::map<std::string, Scenario> table{
      {"random_puts", fabric_worker::random_puts}, {"signal_order", fabric_worker::signal_order},
      {"atomics", fabric_worker::atomics},         {"shutdown", fabric_worker::shutdown},
      {"kill_peer", fabric_worker::kill_peer},     {"isolate_peer", fabric_worker::isolate_peer},
  };
  return table;
}

[[noreturn]] void usage(const char* why) {
  std::fprintf(stderr,
               "fabric_worker: %s\nusage: fabric_worker SCENARIO [--fabric ucx|verbs|noop] [--seed N] "
               "[--rounds N] [--timeout S] [--tag TEXT]\nscenarios:",
               why);
  for (const auto& [name, _] : scenarios()) std::fprintf(stderr, " %s", name.c_str());
  std::fprintf(stderr, "\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) usage("no scenario");
  auto found = scenarios().find(argv[1]);
  if (found == scenarios().end()) usage("unknown scenario");

  const auto options =
      worker_common::read_options(argc, argv, 2, {"--fabric", "--seed", "--rounds", "--timeout", "--tag"},
                                  [](const std::string& why) { usage(why.c_str()); });
  const std::string fabric = options.count("--fabric") ? options.at("--fabric") : "ucx";
  const int rounds = options.count("--rounds") ? std::atoi(options.at("--rounds").c_str()) : 0;
  const int timeout_s = options.count("--timeout") ? std::atoi(options.at("--timeout").c_str()) : 30;
  std::uint64_t seed = worker_common::chosen_seed(options);

  int rank = -1;
  try {
    ferry::GroupOptions group_options;
    group_options.timeout = std::chrono::seconds(timeout_s);
    auto group = ferry::Group::from_env(group_options);
    rank = group.rank();
    seed = worker_common::agree_on_seed(group, "fabric_worker", argv[1], seed);

    fabric_worker::Context context;
    context.group = &group;
    context.peers = ferry::runtime::group_peers(group, std::chrono::seconds(timeout_s));
    context.options.kind = ferry::transport::parse_fabric_kind(fabric);
    context.seed = seed;
    context.rounds = rounds;
    found->second(context);
    worker_common::report_ok(rank, argv[1]);
    return 0;
  } catch (const std::exception& e) {
    return worker_common::report_failure(rank, e);
  }
}
