#include "probe/fabric_probe.hpp"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>

#include "ferry/core/error.hpp"
#include "ferry/runtime/group_peers.hpp"
#include "probe/pair_schedule.hpp"

namespace ferry::tools::probe {
namespace {

using transport::Fabric;
using transport::MemoryKind;
using transport::RegionId;

constexpr std::size_t kPingWord = 0;  // initiator -> responder
constexpr std::size_t kPongWord = 1;  // responder -> initiator
constexpr int kLatencyWarmup = 3;
constexpr std::size_t kLatencyBytes = 8;

std::uint64_t load_acquire(const std::uint64_t* word) {
  return std::atomic_ref<std::uint64_t>(*const_cast<std::uint64_t*>(word)).load(std::memory_order_acquire);
}

class FabricProbe {
 public:
  FabricProbe(Group& group, const FabricProbeOptions& options) : group_(group), options_(options) {
    if (options.message_bytes == 0) fail(Errc::invalid_argument, "probe fabric: the message size is zero");
    matrix_.level = resolve_level(options.level, group.num_nodes(), group.world_size());
    matrix_.message_bytes = options.message_bytes;
    const int stride = matrix_.level == "node" ? group.local_size() : 1;
    for (int rank = 0; rank < group.world_size(); rank += stride) {
      const auto& info = group.ranks()[static_cast<std::size_t>(rank)];
      if (rank == group.rank()) me_ = static_cast<int>(matrix_.endpoints.size());
      matrix_.endpoints.push_back({rank, info.node, info.hostname, info.address});
    }
    puts_ = static_cast<int>(std::max<std::size_t>(1, options.link_bytes / options.message_bytes));

    peers_ = runtime::group_peers(group, options.timeout);
    transport::FabricOptions fabric_options;
    fabric_options.kind = options.fabric;
    fabric_ = transport::make_fabric(peers_, fabric_options);
    send_ = fabric_->register_region(nullptr, options.message_bytes, MemoryKind::host);
    receive_ = fabric_->register_region(nullptr, options.message_bytes, MemoryKind::host);
    words_ = fabric_->register_region(nullptr, 64, MemoryKind::host);
    fabric_->connect();
    auto* bytes = static_cast<std::uint8_t*>(fabric_->region_base(send_));
    for (std::size_t i = 0; i < options.message_bytes; ++i) bytes[i] = static_cast<std::uint8_t>(i * 131 + 7);
    words_base_ = static_cast<std::uint64_t*>(fabric_->region_base(words_));
  }

  LinkMatrix run() {
    const auto rounds = round_robin_rounds(static_cast<int>(matrix_.endpoints.size()));
    matrix_.rounds = static_cast<int>(rounds.size());
    nlohmann::json mine = nlohmann::json::array();
    for (std::size_t r = 0; r < rounds.size(); ++r) {
      const int partner = partner_in(rounds[r]);
      transport::fabric_barrier(*fabric_, peers_, "probe/fabric/bandwidth");
      Link link;
      if (partner >= 0) link = measure_bandwidth(partner, static_cast<int>(r));
      // Latency one direction at a time: the lower endpoint of each pair pings first.
      for (int phase = 0; phase < 2; ++phase) {
        transport::fabric_barrier(*fabric_, peers_, "probe/fabric/latency");
        if (partner < 0) continue;
        const bool initiator = (me_ < partner) == (phase == 0);
        if (initiator) {
          measure_latency(partner, link);
        } else {
          answer_pings(partner);
        }
      }
      if (partner >= 0) mine.push_back(to_json(link));
    }
    fabric_->flush();
    transport::fabric_barrier(*fabric_, peers_, "probe/fabric/done");

    const std::string text = mine.dump();
    auto all = group_.all_gather("probe/fabric/links",
                                 {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
    for (const auto& blob : all) {
      for (const auto& entry : nlohmann::json::parse(blob.begin(), blob.end()))
        matrix_.links.push_back(link_from_json(entry));
    }
    std::sort(matrix_.links.begin(), matrix_.links.end(),
              [](const Link& a, const Link& b) { return std::pair(a.from, a.to) < std::pair(b.from, b.to); });
    return matrix_;
  }

 private:
  int partner_in(const Round& round) const {
    for (const auto& [a, b] : round) {
      if (a == me_) return b;
      if (b == me_) return a;
    }
    return -1;
  }

  int rank_of(int endpoint) const { return matrix_.endpoints[static_cast<std::size_t>(endpoint)].rank; }

  Link measure_bandwidth(int partner, int round) {
    const int target = rank_of(partner);
    const std::size_t size = options_.message_bytes;
    for (int i = 0; i < options_.warmup_puts; ++i) fabric_->put(target, send_, 0, receive_, 0, size);
    fabric_->flush();
    const auto start = std::chrono::steady_clock::now();
    for (int i = 0; i < puts_; ++i) {
      fabric_->put(target, send_, 0, receive_, 0, size);
      fabric_->progress();
    }
    fabric_->flush();
    Link link;
    link.from = me_;
    link.to = partner;
    link.round = round;
    link.puts = puts_;
    link.warmup_puts = options_.warmup_puts;
    link.bytes = static_cast<std::uint64_t>(puts_) * size;
    link.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    link.gbps = link.seconds > 0 ? static_cast<double>(link.bytes) / link.seconds / 1e9 : 0.0;
    return link;
  }

  void measure_latency(int partner, Link& link) {
    const int target = rank_of(partner);
    std::chrono::steady_clock::time_point start;
    for (int i = 0; i < kLatencyWarmup + options_.latency_iters; ++i) {
      if (i == kLatencyWarmup) start = std::chrono::steady_clock::now();
      fabric_->put_signal(target, send_, 0, receive_, 0, kLatencyBytes, words_, kPingWord * 8, 1);
      wait_word(kPongWord, ++pongs_, "a latency pong", partner);
    }
    const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    link.latency_iters = options_.latency_iters;
    link.latency_us = options_.latency_iters > 0 ? seconds / options_.latency_iters / 2 * 1e6 : 0.0;
  }

  void answer_pings(int partner) {
    const int target = rank_of(partner);
    for (int i = 0; i < kLatencyWarmup + options_.latency_iters; ++i) {
      wait_word(kPingWord, ++pings_, "a latency ping", partner);
      fabric_->put_signal(target, send_, 0, receive_, 0, kLatencyBytes, words_, kPongWord * 8, 1);
    }
  }

  // Waits until `word` reaches `target`, progressing the fabric; yields rather than sleeps (latency).
  void wait_word(std::size_t word, std::uint64_t target, const char* what, int partner) {
    Deadline deadline(options_.timeout);
    for (std::uint32_t spins = 0; load_acquire(&words_base_[word]) < target; ++spins) {
      if (fabric_->progress()) continue;
      if ((spins & 1023) == 0 && deadline.expired()) {
        fail(Errc::timeout, "probe fabric: rank " + std::to_string(group_.rank()) + " waited " +
                                std::to_string(std::chrono::duration<double>(options_.timeout).count()) +
                                " s for " + what + " from " + endpoint_name(matrix_, partner));
      }
      sched_yield();
    }
  }

  Group& group_;
  FabricProbeOptions options_;
  LinkMatrix matrix_;
  int me_ = -1;  // this rank's endpoint, -1 when it only helps
  int puts_ = 1;
  transport::Peers peers_;
  std::unique_ptr<Fabric> fabric_;
  RegionId send_ = 0, receive_ = 0, words_ = 0;
  std::uint64_t* words_base_ = nullptr;
  std::uint64_t pings_ = 0, pongs_ = 0;
};

}  // namespace

std::string resolve_level(const std::string& level, int num_nodes, int world_size) {
  std::string resolved = level;
  if (level == "auto") resolved = num_nodes >= 2 ? "node" : "rank";
  if (resolved != "node" && resolved != "rank") {
    fail(Errc::invalid_argument, "--level must be node, rank or auto, not '" + level + "'");
  }
  const int endpoints = resolved == "node" ? num_nodes : world_size;
  if (endpoints < 2) {
    fail(Errc::invalid_argument,
         "the job has " + std::to_string(endpoints) + " " + resolved + (endpoints == 1 ? "" : "s") +
             ", and a link needs two (run it under `ferry launch --nodes 2` or more, or "
             "with --level rank on several ranks)");
  }
  return resolved;
}

LinkMatrix run_fabric_probe(Group& group, const FabricProbeOptions& options) {
  FabricProbe probe(group, options);
  return probe.run();
}

}  // namespace ferry::tools::probe
