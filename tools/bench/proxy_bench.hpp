// The proxy benchmark (`ferry bench transport --proxy`): how many commands per second a proxy thread turns
// into fabric operations.
//
// 1. noop: every rank runs `threads` proxy threads, each with its own noop fabric and ring, and one producer
//    thread per ring posting put_signal commands as fast as it can; measures commands/s per proxy thread (the
//    cost of the ring and the proxy loop alone; target >= 5 M/s per thread). Ranks take turns by default.
// 2. fabric: rank r < W/2 posts put_signal commands of each size to rank r + W/2 through a ring drained by a
// proxy
//    over the real fabric, ending with a flush; commands/s counts until everything is visible at the
//    receiver, which checks its signal word and every byte of the received window. Needs at least 2 ranks;
//    skipped for the noop fabric.
#pragma once

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/fabric.hpp"

namespace ferry::tools {

struct ProxyBenchOptions {
  std::optional<transport::FabricKind> fabric;  // the real fabric; unset: FERRY_FABRIC / auto
  int threads = 1;                              // proxy threads (and rings, and producers) for the noop part
  std::uint64_t noop_commands = 4'000'000;      // per producer thread
  // Measure the ranks' noop proxies one after another (true) or all at once: emulated clusters put many ranks
  // on few cores, where concurrent runs would measure the core count rather than the proxy.
  bool noop_one_rank_at_a_time = true;
  std::vector<std::size_t> sizes{8, 64, 512, 4096};
  std::uint64_t fabric_commands = 20'000;  // per size and sending rank
  std::uint32_t ring_slots = 4096;
  std::size_t max_in_flight = 1024;
  Duration timeout = kDefaultTimeout;
};

// Collective: every rank of `group` calls it with the same options. Returns the job's report on every rank:
// {"benchmark": "proxy", "options": {...},
//  "noop": {"threads", "commands_per_thread", "ranks": [{"rank", "threads": [{"seconds", "commands_per_s"}],
//           "commands_per_s"}], "min_thread_commands_per_s"},
//  "fabric": {"kind", "description", "skipped" (reason, when skipped),
//             "pairs": [{"sender", "receiver", "results": [{"bytes", "commands", "seconds", "commands_per_s",
//                        "gbytes_per_s", "verified"}]}]}}
// Throws ferry::Error when a receiver finds a wrong byte or signal, or any wait passes options.timeout.
nlohmann::json run_proxy_bench(Group& group, const ProxyBenchOptions& options);

// The report as two small tables on stdout.
void print_proxy_report(const nlohmann::json& report);

}  // namespace ferry::tools
