#include "bench/proxy_bench.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"
#include "ferry/runtime/group_peers.hpp"
#include "ferry/transport/command_ring.hpp"
#include "ferry/transport/peers.hpp"
#include "ferry/transport/proxy.hpp"
#include "ferry/transport/store.hpp"

namespace ferry::tools {
namespace {

using transport::Command;
using transport::Fabric;
using transport::FabricKind;
using transport::Proxy;
using transport::ProxyOptions;

constexpr std::size_t kNoopRegionBytes = 1 << 20;
constexpr std::size_t kNoopMessageBytes = 64;

transport::Peers peers_of(Group& group, Duration timeout) {
  return runtime::group_peers(group, timeout);
}

ProxyOptions proxy_options(const ProxyBenchOptions& options, int rings) {
  ProxyOptions proxy;
  proxy.rings = rings;
  proxy.ring_slots = options.ring_slots;
  proxy.max_in_flight = options.max_in_flight;
  proxy.memory = transport::RingMemory::host;  // CPU producers here; no CUDA context needed
  proxy.timeout = options.timeout;
  return proxy;
}

// The byte a sender puts at offset i of its send window (the receiver recomputes it).
std::uint8_t pattern_byte(int rank, std::size_t i) {
  return static_cast<std::uint8_t>((i * 131 + static_cast<std::size_t>(rank) * 29 + (i >> 8)) & 0xff);
}

nlohmann::json run_noop(Group& group, const ProxyBenchOptions& options) {
  const transport::Peers peers = peers_of(group, options.timeout);
  std::vector<std::unique_ptr<Fabric>> fabrics;
  for (int t = 0; t < options.threads; ++t) {
    transport::FabricOptions fabric_options;
    fabric_options.kind = FabricKind::noop;
    auto fabric = transport::make_fabric(peers, fabric_options);
    fabric->register_region(nullptr, kNoopRegionBytes, transport::MemoryKind::host);
    fabric->connect();
    fabrics.push_back(std::move(fabric));
  }
  Proxy proxy(std::move(fabrics), proxy_options(options, options.threads));
  const auto peer = static_cast<std::uint16_t>((group.rank() + 1) % group.world_size());
  const std::uint64_t count = options.noop_commands;
  std::vector<double> seconds(static_cast<std::size_t>(options.threads), 0.0);
  std::vector<std::exception_ptr> failures(static_cast<std::size_t>(options.threads));
  // Taking turns: rank r starts after r + 1 rounds of the barrier, the others wait in it meanwhile.
  const int turns = options.noop_one_rank_at_a_time ? group.world_size() : 1;
  const int my_turn = options.noop_one_rank_at_a_time ? group.rank() : 0;
  for (int turn = 0; turn <= my_turn; ++turn) group.barrier("proxy-bench/noop/turn");
  std::vector<std::thread> producers;
  for (int t = 0; t < options.threads; ++t) {
    producers.emplace_back([&, t] {
      try {
        transport::ProducerRing& ring = proxy.ring(t);
        const std::uint64_t slots =
            kNoopRegionBytes / kNoopMessageBytes - 1;  // the last slot holds the signal
        const auto signal = static_cast<std::uint32_t>(kNoopRegionBytes - 8);
        auto start = Clock::now();
        for (std::uint64_t i = 0; i < count; ++i) {
          const std::uint64_t offset = (i % slots) * kNoopMessageBytes;
          ring.post(transport::make_put_signal(peer, 0, offset, offset, kNoopMessageBytes, signal, 1));
        }
        ring.wait_completed(count);
        seconds[static_cast<std::size_t>(t)] = seconds_since(start);
      } catch (...) {
        failures[static_cast<std::size_t>(t)] = std::current_exception();
      }
    });
  }
  for (auto& producer : producers) producer.join();
  for (int turn = my_turn + 1; turn < turns; ++turn) group.barrier("proxy-bench/noop/turn");
  for (auto& failure : failures) {
    if (failure) std::rethrow_exception(failure);
  }
  nlohmann::json threads = nlohmann::json::array();
  double slowest = 0;
  for (int t = 0; t < options.threads; ++t) {
    const double s = seconds[static_cast<std::size_t>(t)];
    slowest = std::max(slowest, s);
    threads.push_back({{"seconds", s},
                       {"commands_per_s", static_cast<double>(count) / s},
                       {"executed", proxy.commands_executed(t)}});
  }
  return {{"rank", group.rank()},
          {"threads", threads},
          {"commands_per_s", static_cast<double>(count) * options.threads / slowest}};
}

struct FabricLayout {
  std::size_t window = 0;  // bytes of the send window (and of the receive window)
  std::size_t send_base = 0;
  std::size_t recv_base = 0;
  std::size_t signal_base = 0;  // one word per size, then one for the warm-up
  std::size_t bytes = 0;
};

FabricLayout layout_for(const ProxyBenchOptions& options) {
  FabricLayout layout;
  const std::size_t largest = *std::max_element(options.sizes.begin(), options.sizes.end());
  layout.window = std::max<std::size_t>(std::size_t{1} << 20, largest * 16);
  layout.send_base = 0;
  layout.recv_base = layout.window;
  layout.signal_base = 2 * layout.window;
  layout.bytes = layout.signal_base + 8 * (options.sizes.size() + 1);
  return layout;
}

// Waits until the 64-bit word at `word` reaches `target` while the proxy keeps the fabric progressing.
void wait_signal(const std::uint64_t* word, std::uint64_t target, Proxy& proxy, Duration timeout,
                 const std::string& what) {
  Deadline deadline(timeout);
  Backoff backoff;
  while (__atomic_load_n(word, __ATOMIC_ACQUIRE) < target) {
    proxy.check_error();
    if (deadline.expired()) {
      fail(Errc::timeout,
           what + ": signal is " + std::to_string(__atomic_load_n(word, __ATOMIC_ACQUIRE)) + " after " +
               std::to_string(std::chrono::duration_cast<std::chrono::seconds>(timeout).count()) +
               " s, expected " + std::to_string(target));
    }
    backoff.pause();
  }
  const std::uint64_t value = __atomic_load_n(word, __ATOMIC_ACQUIRE);
  if (value != target) {
    fail(Errc::internal,
         what + ": signal overshot to " + std::to_string(value) + ", expected " + std::to_string(target));
  }
}

// Posts `count` put_signals of `bytes` each to `receiver` (cycling through the window), then a flush, and
// waits until all are complete, i.e. visible at the receiver.
double send_burst(transport::ProducerRing& ring, int receiver, const FabricLayout& layout, std::size_t bytes,
                  std::uint64_t count, std::size_t signal_index) {
  const std::size_t slots = layout.window / bytes;
  const auto signal = static_cast<std::uint32_t>(layout.signal_base + 8 * signal_index);
  auto start = Clock::now();
  for (std::uint64_t i = 0; i < count; ++i) {
    const std::size_t offset = (i % slots) * bytes;
    ring.post(transport::make_put_signal(static_cast<std::uint16_t>(receiver), 0, layout.send_base + offset,
                                         layout.recv_base + offset, static_cast<std::uint32_t>(bytes), signal,
                                         1));
  }
  ring.post(transport::make_flush());
  ring.wait_completed(ring.posted());
  return seconds_since(start);
}

nlohmann::json run_fabric(Group& group, const ProxyBenchOptions& options, FabricKind kind) {
  const transport::Peers peers = peers_of(group, options.timeout);
  const FabricLayout layout = layout_for(options);
  transport::FabricOptions fabric_options;
  fabric_options.kind = kind;
  auto fabric = transport::make_fabric(peers, fabric_options);
  const transport::RegionId region =
      fabric->register_region(nullptr, layout.bytes, transport::MemoryKind::host);
  if (region != 0) fail(Errc::internal, "proxy bench: expected region 0, got " + std::to_string(region));
  fabric->connect();
  auto* base = static_cast<std::uint8_t*>(fabric->region_base(region));
  const std::string description = fabric->description();
  for (std::size_t i = 0; i < layout.window; ++i) base[layout.send_base + i] = pattern_byte(group.rank(), i);

  const int world = group.world_size();
  const int half = world / 2;
  const bool sender = group.rank() < half;
  const bool receiver = group.rank() >= half && group.rank() < 2 * half;
  const int partner = sender ? group.rank() + half : group.rank() - half;

  Proxy proxy(std::move(fabric), proxy_options(options, 1));
  transport::ProducerRing& ring = proxy.ring(0);
  const std::size_t warmup_index = options.sizes.size();
  const std::uint64_t warmup_count = std::min<std::uint64_t>(1000, options.fabric_commands);
  group.barrier("proxy-bench/fabric/ready");
  if (sender) send_burst(ring, partner, layout, options.sizes.front(), warmup_count, warmup_index);
  if (receiver) {
    wait_signal(reinterpret_cast<std::uint64_t*>(base + layout.signal_base + 8 * warmup_index), warmup_count,
                proxy, options.timeout, "proxy bench warm-up from rank " + std::to_string(partner));
  }

  nlohmann::json results = nlohmann::json::array();
  for (std::size_t k = 0; k < options.sizes.size(); ++k) {
    const std::size_t bytes = options.sizes[k];
    const std::uint64_t count = options.fabric_commands;
    group.barrier("proxy-bench/fabric/size");
    if (sender) {
      const double seconds = send_burst(ring, partner, layout, bytes, count, k);
      results.push_back({{"bytes", bytes},
                         {"commands", count},
                         {"seconds", seconds},
                         {"commands_per_s", static_cast<double>(count) / seconds},
                         {"gbytes_per_s", static_cast<double>(count * bytes) / seconds / 1e9}});
    }
    if (receiver) {
      const std::string what = "proxy bench, " + std::to_string(bytes) + "-byte put_signals from rank " +
                               std::to_string(partner) + " to rank " + std::to_string(group.rank());
      wait_signal(reinterpret_cast<std::uint64_t*>(base + layout.signal_base + 8 * k), count, proxy,
                  options.timeout, what);
      const std::size_t covered = std::min<std::uint64_t>(count, layout.window / bytes) * bytes;
      for (std::size_t i = 0; i < covered; ++i) {
        if (base[layout.recv_base + i] != pattern_byte(partner, i)) {
          fail(Errc::internal, what + ": byte " + std::to_string(i) + " is " +
                                   std::to_string(base[layout.recv_base + i]) + ", expected " +
                                   std::to_string(pattern_byte(partner, i)));
        }
      }
      results.push_back({{"bytes", bytes}, {"verified", true}});
    }
  }
  // Nobody tears down its fabric before every receiver has checked everything.
  group.barrier("proxy-bench/fabric/done");
  proxy.check_error();
  return {{"rank", group.rank()},
          {"role", sender     ? "sender"
                   : receiver ? "receiver"
                              : "idle"},
          {"partner", partner},
          {"description", description},
          {"results", results}};
}

nlohmann::json gather(Group& group, const std::string& name, const nlohmann::json& mine) {
  const std::string text = mine.dump();
  auto all = group.all_gather(
      name, std::span<const std::uint8_t>(reinterpret_cast<const std::uint8_t*>(text.data()), text.size()));
  nlohmann::json out = nlohmann::json::array();
  for (const auto& blob : all) out.push_back(nlohmann::json::parse(blob.begin(), blob.end()));
  return out;
}

void check_options(const ProxyBenchOptions& options) {
  if (options.threads < 1) fail(Errc::invalid_argument, "proxy bench: threads must be at least 1");
  if (options.noop_commands == 0) fail(Errc::invalid_argument, "proxy bench: noop_commands is 0");
  if (options.fabric_commands == 0) fail(Errc::invalid_argument, "proxy bench: fabric_commands is 0");
  if (options.sizes.empty()) fail(Errc::invalid_argument, "proxy bench: no message sizes");
  for (std::size_t size : options.sizes) {
    if (size == 0 || size > (std::size_t{1} << 30)) {
      fail(Errc::invalid_argument,
           "proxy bench: message size " + std::to_string(size) + " is outside [1, 1 GiB]");
    }
  }
}

}  // namespace

nlohmann::json run_proxy_bench(Group& group, const ProxyBenchOptions& options) {
  check_options(options);
  const FabricKind kind = options.fabric ? *options.fabric : transport::fabric_kind_from_env();
  nlohmann::json report;
  report["benchmark"] = "proxy";
  report["options"] = {{"threads", options.threads},
                       {"noop_commands", options.noop_commands},
                       {"noop_one_rank_at_a_time", options.noop_one_rank_at_a_time},
                       {"sizes", options.sizes},
                       {"fabric_commands", options.fabric_commands},
                       {"ring_slots", options.ring_slots},
                       {"max_in_flight", options.max_in_flight}};

  nlohmann::json noop_ranks = gather(group, "proxy-bench/noop/results", run_noop(group, options));
  double slowest_thread = 0;
  for (const auto& rank : noop_ranks) {
    for (const auto& thread : rank["threads"]) {
      const double rate = thread["commands_per_s"].get<double>();
      slowest_thread = slowest_thread == 0 ? rate : std::min(slowest_thread, rate);
    }
  }
  report["noop"] = {{"threads", options.threads},
                    {"commands_per_thread", options.noop_commands},
                    {"ranks", noop_ranks},
                    {"min_thread_commands_per_s", slowest_thread}};

  nlohmann::json fabric = {{"kind", transport::to_string(kind)}};
  if (kind == FabricKind::noop) {
    fabric["skipped"] = "the noop fabric is measured above";
  } else if (group.world_size() < 2) {
    fabric["skipped"] = "needs at least 2 ranks";
  } else {
    nlohmann::json ranks = gather(group, "proxy-bench/fabric/results", run_fabric(group, options, kind));
    fabric["description"] = ranks[0]["description"];
    nlohmann::json pairs = nlohmann::json::array();
    for (const auto& rank : ranks) {
      if (rank["role"] != "sender") continue;
      const int receiver = rank["partner"].get<int>();
      nlohmann::json results = rank["results"];
      for (std::size_t k = 0; k < results.size(); ++k) {
        results[k]["verified"] = ranks[static_cast<std::size_t>(receiver)]["results"][k]["verified"];
      }
      pairs.push_back({{"sender", rank["rank"]}, {"receiver", receiver}, {"results", results}});
    }
    fabric["pairs"] = pairs;
  }
  report["fabric"] = fabric;
  return report;
}

void print_proxy_report(const nlohmann::json& report) {
  const auto& noop = report["noop"];
  std::printf("proxy, noop fabric: %d proxy thread(s) per rank, %llu commands each\n",
              noop["threads"].get<int>(),
              static_cast<unsigned long long>(noop["commands_per_thread"].get<std::uint64_t>()));
  std::printf("  %-6s %-8s %14s\n", "rank", "thread", "M commands/s");
  for (const auto& rank : noop["ranks"]) {
    int t = 0;
    for (const auto& thread : rank["threads"]) {
      std::printf("  %-6d %-8d %14.2f\n", rank["rank"].get<int>(), t++,
                  thread["commands_per_s"].get<double>() / 1e6);
    }
  }
  const auto& fabric = report["fabric"];
  if (fabric.contains("skipped")) {
    std::printf("proxy, %s fabric: skipped (%s)\n", fabric["kind"].get<std::string>().c_str(),
                fabric["skipped"].get<std::string>().c_str());
    return;
  }
  std::printf("proxy, %s fabric: put_signal through one ring, flushed (%s)\n",
              fabric["kind"].get<std::string>().c_str(), fabric["description"].get<std::string>().c_str());
  std::printf("  %-8s %10s %14s %10s %9s\n", "pair", "bytes", "M commands/s", "GB/s", "verified");
  for (const auto& pair : fabric["pairs"]) {
    const std::string name =
        std::to_string(pair["sender"].get<int>()) + "->" + std::to_string(pair["receiver"].get<int>());
    for (const auto& result : pair["results"]) {
      std::printf("  %-8s %10zu %14.3f %10.3f %9s\n", name.c_str(), result["bytes"].get<std::size_t>(),
                  result["commands_per_s"].get<double>() / 1e6, result["gbytes_per_s"].get<double>(),
                  result["verified"].get<bool>() ? "yes" : "NO");
    }
  }
}

}  // namespace ferry::tools
