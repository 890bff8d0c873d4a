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

namespace {

using Scenario = void (*)(const fabric_worker::Context&);

const std::map<std::string, Scenario>& scenarios() {
  static const std::map<std::string, Scenario> table{
      {"random_puts", fabric_worker::random_puts}, {"signal_order", fabric_worker::signal_order},
      {"atomics", fabric_worker::atomics},         {"shutdown", fabric_worker::shutdown},
      {"kill_peer", fabric_worker::kill_peer},
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

  std::string fabric = "ucx";
  std::uint64_t seed = 0;
  bool seeded = false;
  int rounds = 0;
  int timeout_s = 30;
  for (int i = 2; i < argc; ++i) {
    std::string arg = argv[i];
    if (i + 1 >= argc) usage(("missing value after " + arg).c_str());
    std::string value = argv[++i];
    if (arg == "--fabric") {
      fabric = value;
    } else if (arg == "--seed") {
      seed = std::strtoull(value.c_str(), nullptr, 10);
      seeded = true;
    } else if (arg == "--rounds") {
      rounds = std::atoi(value.c_str());
    } else if (arg == "--timeout") {
      timeout_s = std::atoi(value.c_str());
    } else if (arg != "--tag") {
      usage(("unknown option " + arg).c_str());
    }
  }
  if (!seeded) {
    if (const char* env = std::getenv("FERRY_TEST_SEED")) {
      seed = std::strtoull(env, nullptr, 10);
    } else {
      seed = std::random_device{}();
    }
  }

  int rank = -1;
  try {
    ferry::GroupOptions group_options;
    group_options.timeout = std::chrono::seconds(timeout_s);
    auto group = ferry::Group::from_env(group_options);
    rank = group.rank();
    // Everyone runs with rank 0's seed, so one printed number replays the whole job.
    std::vector<std::uint8_t> mine(8);
    std::memcpy(mine.data(), &seed, 8);
    auto seeds = group.all_gather("fabric_worker/seed", mine);
    std::memcpy(&seed, seeds[0].data(), 8);
    if (rank == 0) std::printf("%s: seed %llu\n", argv[1], static_cast<unsigned long long>(seed));

    fabric_worker::Context context;
    context.group = &group;
    context.peers = ferry::runtime::group_peers(group, std::chrono::seconds(timeout_s));
    context.options.kind = ferry::transport::parse_fabric_kind(fabric);
    context.seed = seed;
    context.rounds = rounds;
    found->second(context);
    std::printf("rank %d: %s ok\n", rank, argv[1]);
    std::fflush(stdout);
    return 0;
  } catch (const std::exception& e) {
    std::printf("rank %d: FAILED: %s\n", rank, e.what());
    std::fflush(stdout);
    return 1;
  }
}
