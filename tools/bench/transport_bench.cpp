#include "bench/transport_bench.hpp"

#include <sched.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "bench/machine_info.hpp"
#include "bench/sizes.hpp"
#include "bench/tcp_stream.hpp"
#include "ferry/core/error.hpp"
#include "ferry/runtime/group_peers.hpp"

extern char** environ;

namespace ferry::tools {
namespace {

using transport::Fabric;
using transport::MemoryKind;
using transport::RegionId;
using Seconds = std::chrono::duration<double>;

// Signal words in the `words` region, the same layout on every rank.
constexpr std::size_t kDoneWord = 0;  // sender -> receiver: one bandwidth round finished
constexpr std::size_t kPingWord = 1;  // sender -> receiver: latency pings
constexpr std::size_t kPongWord = 2;  // receiver -> sender: latency pongs

int put_iters_for(std::size_t bytes, int forced) {
  if (forced > 0) return forced;
  return static_cast<int>(std::clamp<std::size_t>((std::size_t{256} << 20) / bytes, 8, 4096));
}

int latency_iters_for(std::size_t bytes, int forced) {
  if (forced > 0) return forced;
  return static_cast<int>(std::clamp<std::size_t>((std::size_t{32} << 20) / bytes, 8, 1000));
}

double gbps(std::size_t bytes, double seconds) {
  return seconds > 0 ? double(bytes) / seconds / 1e9 : 0.0;
}

nlohmann::json ucx_environment() {
  nlohmann::json vars = nlohmann::json::object();
  for (char** entry = environ; *entry != nullptr; ++entry) {
    std::string text = *entry;
    if (text.rfind("UCX_", 0) != 0) continue;
    auto equals = text.find('=');
    vars[text.substr(0, equals)] = equals == std::string::npos ? "" : text.substr(equals + 1);
  }
  return vars;
}

std::uint64_t load_acquire(const std::uint64_t* word) {
  return std::atomic_ref<std::uint64_t>(*const_cast<std::uint64_t*>(word)).load(std::memory_order_acquire);
}

class TransportBench {
 public:
  TransportBench(Group& group, const TransportBenchOptions& options) : group_(group), options_(options) {
    if (group.world_size() < 2 || group.world_size() % 2 != 0) {
      fail(Errc::invalid_argument,
           "bench transport pairs rank r with rank r + W/2 and needs an even world size "
           "of at least 2, not " +
               std::to_string(group.world_size()) + " (run it under `ferry launch`)");
    }
    if (options.sizes.empty()) fail(Errc::invalid_argument, "bench transport: no message sizes");
    const int half = group.world_size() / 2;
    sender_ = group.rank() < half;
    partner_ = sender_ ? group.rank() + half : group.rank() - half;
    max_bytes_ = *std::max_element(options.sizes.begin(), options.sizes.end());

    peers_ = runtime::group_peers(group, options.timeout);
    transport::FabricOptions fabric_options;
    fabric_options.kind = options.fabric;
    fabric_ = transport::make_fabric(peers_, fabric_options);
    send_ = fabric_->register_region(nullptr, max_bytes_, MemoryKind::host);
    receive_ = fabric_->register_region(nullptr, max_bytes_, MemoryKind::host);
    words_ = fabric_->register_region(nullptr, 64, MemoryKind::host);
    fabric_->connect();
    auto* bytes = static_cast<std::uint8_t*>(fabric_->region_base(send_));
    for (std::size_t i = 0; i < max_bytes_; ++i) bytes[i] = static_cast<std::uint8_t>(i * 131 + 7);
    words_base_ = static_cast<std::uint64_t*>(fabric_->region_base(words_));
  }

  nlohmann::json run() {
    nlohmann::json results = nlohmann::json::array();
    if (!options_.skip_tcp) connect_tcp();
    for (std::size_t bytes : options_.sizes) {
      nlohmann::json row = {{"bytes", bytes}};
      measure_put_bandwidth(bytes, row);
      measure_put_latency(bytes, row);
      if (!options_.skip_tcp) measure_tcp(bytes, row);
      measure_memcpy(bytes, row);
      results.push_back(row);
    }
    fabric_->flush();
    transport::fabric_barrier(*fabric_, peers_, "bench/transport/done");

    nlohmann::json mine = nlohmann::json::object();
    if (sender_) mine = {{"sender", group_.rank()}, {"receiver", partner_}, {"results", results}};
    std::string text = mine.dump();
    auto all =
        group_.all_gather("bench/transport/results", std::vector<std::uint8_t>(text.begin(), text.end()));
    nlohmann::json pairs = nlohmann::json::array();
    for (const auto& blob : all) {
      auto entry = nlohmann::json::parse(blob.begin(), blob.end());
      if (!entry.empty()) pairs.push_back(entry);
    }
    return {{"benchmark", "transport"},
            {"date", now_iso8601()},
            {"machine", machine_info()},
            {"job",
             {{"world_size", group_.world_size()},
              {"nodes", group_.num_nodes()},
              {"ranks_per_node", group_.local_size()},
              {"launcher", to_string(group_.job().launcher)}}},
            {"fabric",
             {{"kind", transport::to_string(options_.fabric)}, {"description", fabric_->description()}}},
            {"ucx_environment", ucx_environment()},
            {"options", {{"iters", options_.iters}, {"tcp", !options_.skip_tcp}}},
            {"pairs", pairs}};
  }

 private:
  // Waits until `word` reaches `target`, progressing the fabric. Latency-critical, so it yields rather than
  // sleeps: sched_yield still hands the core to any other runnable rank.
  void wait_word(std::size_t word, std::uint64_t target, const char* what) {
    Deadline deadline(options_.timeout);
    for (std::uint32_t spins = 0; load_acquire(&words_base_[word]) < target; ++spins) {
      if (fabric_->progress()) continue;
      if ((spins & 1023) == 0 && deadline.expired()) {
        fail(Errc::timeout, std::string("bench transport: rank ") + std::to_string(group_.rank()) +
                                " waited " + std::to_string(Seconds(options_.timeout).count()) + " s for " +
                                what + " from rank " + std::to_string(partner_));
      }
      sched_yield();
    }
  }

  void measure_put_bandwidth(std::size_t bytes, nlohmann::json& row) {
    int iters = put_iters_for(bytes, options_.iters);
    transport::fabric_barrier(*fabric_, peers_, "bench/transport/bandwidth");
    ++done_rounds_;
    if (sender_) {
      for (int i = 0; i < 2; ++i) fabric_->put(partner_, send_, 0, receive_, 0, bytes);  // warm-up
      fabric_->flush();
      auto start = Clock::now();
      for (int i = 0; i < iters; ++i) {
        fabric_->put(partner_, send_, 0, receive_, 0, bytes);
        fabric_->progress();
      }
      fabric_->flush();
      double seconds = Seconds(Clock::now() - start).count();
      fabric_->atomic_add(partner_, words_, kDoneWord * 8, 1);
      fabric_->flush();
      row["put_iters"] = iters;
      row["put_gbps"] = gbps(bytes * std::size_t(iters), seconds);
    } else {
      wait_word(kDoneWord, done_rounds_, "the end of a bandwidth round");
    }
  }

  void measure_put_latency(std::size_t bytes, nlohmann::json& row) {
    int iters = latency_iters_for(bytes, options_.iters);
    transport::fabric_barrier(*fabric_, peers_, "bench/transport/latency");
    if (sender_) {
      auto start = Clock::now();
      for (int i = 0; i < iters; ++i) {
        fabric_->put_signal(partner_, send_, 0, receive_, 0, bytes, words_, kPingWord * 8, 1);
        wait_word(kPongWord, ++pongs_, "a latency pong");
      }
      double seconds = Seconds(Clock::now() - start).count();
      row["latency_iters"] = iters;
      row["put_latency_us"] = seconds / iters / 2 * 1e6;
    } else {
      for (int i = 0; i < iters; ++i) {
        wait_word(kPingWord, ++pings_, "a latency ping");
        fabric_->put_signal(partner_, send_, 0, receive_, 0, bytes, words_, kPongWord * 8, 1);
      }
    }
    fabric_->flush();
    // Over UCX/tcp a flush completes only when the partner's worker acknowledges, so the partner must keep
    // progressing the fabric until this rank's flush is done; the raw TCP part that follows does not.
    transport::fabric_barrier(*fabric_, peers_, "bench/transport/latency_flushed");
  }

  void connect_tcp() {
    // The receiver listens on the address its peers know it by; ports travel through the store.
    const std::string& my_address = group_.ranks()[group_.rank()].address;
    TcpSocket listener;
    std::uint16_t port = 0;
    if (!sender_) {
      listener = TcpSocket::listen_on(my_address);
      port = listener.local_port();
    }
    std::vector<std::uint8_t> mine{static_cast<std::uint8_t>(port >> 8),
                                   static_cast<std::uint8_t>(port & 0xff)};
    auto ports = group_.all_gather("bench/transport/tcp_ports", mine);
    if (sender_) {
      std::uint16_t partner_port = static_cast<std::uint16_t>((ports[partner_][0] << 8) | ports[partner_][1]);
      tcp_ = TcpSocket::connect_to(group_.ranks()[partner_].address, partner_port, options_.timeout);
    } else {
      tcp_ = listener.accept_one(options_.timeout);
    }
    tcp_.set_timeout(options_.timeout);
    tcp_.set_no_delay();
  }

  void measure_tcp(std::size_t bytes, nlohmann::json& row) {
    auto* send_bytes = static_cast<std::uint8_t*>(fabric_->region_base(send_));
    auto* receive_bytes = static_cast<std::uint8_t*>(fabric_->region_base(receive_));
    int iters = put_iters_for(bytes, options_.iters);
    group_.barrier("bench/transport/tcp");
    std::uint8_t ack = 1;
    if (sender_) {
      tcp_.send_all(send_bytes, bytes, "warm-up");
      tcp_.recv_all(&ack, 1, "warm-up ack");
      auto start = Clock::now();
      for (int i = 0; i < iters; ++i) tcp_.send_all(send_bytes, bytes, "stream");
      tcp_.recv_all(&ack, 1, "stream ack");
      double seconds = Seconds(Clock::now() - start).count();
      row["tcp_gbps"] = gbps(bytes * std::size_t(iters), seconds);
    } else {
      tcp_.recv_all(receive_bytes, bytes, "warm-up");
      tcp_.send_all(&ack, 1, "warm-up ack");
      for (int i = 0; i < iters; ++i) tcp_.recv_all(receive_bytes, bytes, "stream");
      tcp_.send_all(&ack, 1, "stream ack");
    }
    int latency_iters = latency_iters_for(bytes, options_.iters);
    if (sender_) {
      auto start = Clock::now();
      for (int i = 0; i < latency_iters; ++i) {
        tcp_.send_all(send_bytes, bytes, "ping");
        tcp_.recv_all(receive_bytes, bytes, "pong");
      }
      double seconds = Seconds(Clock::now() - start).count();
      row["tcp_latency_us"] = seconds / latency_iters / 2 * 1e6;
    } else {
      for (int i = 0; i < latency_iters; ++i) {
        tcp_.recv_all(receive_bytes, bytes, "ping");
        tcp_.send_all(send_bytes, bytes, "pong");
      }
    }
  }

  void measure_memcpy(std::size_t bytes, nlohmann::json& row) {
    if (!sender_) return;
    auto* source = static_cast<std::uint8_t*>(fabric_->region_base(send_));
    auto* target = static_cast<std::uint8_t*>(fabric_->region_base(receive_));
    int iters = static_cast<int>(std::clamp<std::size_t>((std::size_t{1} << 30) / bytes, 16, 100000));
    std::memcpy(target, source, bytes);
    auto start = Clock::now();
    for (int i = 0; i < iters; ++i) {
      std::memcpy(target, source, bytes);
      std::atomic_signal_fence(std::memory_order_seq_cst);  // keep the copies from being merged away
    }
    double seconds = Seconds(Clock::now() - start).count();
    row["memcpy_gbps"] = gbps(bytes * std::size_t(iters), seconds);
  }

  Group& group_;
  TransportBenchOptions options_;
  transport::Peers peers_;
  bool sender_ = false;
  int partner_ = 0;
  std::size_t max_bytes_ = 0;
  std::unique_ptr<Fabric> fabric_;
  RegionId send_ = 0, receive_ = 0, words_ = 0;
  std::uint64_t* words_base_ = nullptr;
  std::uint64_t done_rounds_ = 0, pings_ = 0, pongs_ = 0;
  TcpSocket tcp_;
};

std::string number(const nlohmann::json& row, const char* key, const char* format) {
  if (!row.contains(key)) return "-";
  char text[32];
  std::snprintf(text, sizeof text, format, row[key].get<double>());
  return text;
}

}  // namespace

nlohmann::json run_transport_bench(Group& group, const TransportBenchOptions& options) {
  TransportBench bench(group, options);
  return bench.run();
}

void print_transport_report(const nlohmann::json& report) {
  const auto& job = report["job"];
  std::printf("ferry bench transport: %d ranks = %d node(s) x %d, %s\n", job["world_size"].get<int>(),
              job["nodes"].get<int>(), job["ranks_per_node"].get<int>(),
              report["fabric"]["description"].get<std::string>().c_str());
  std::printf("machine: %s, %u cores, %s, %s\n", report["machine"]["hostname"].get<std::string>().c_str(),
              report["machine"]["nproc"].get<unsigned>(), report["machine"]["cpu"].get<std::string>().c_str(),
              report["machine"]["kernel"].get<std::string>().c_str());
  for (const auto& pair : report["pairs"]) {
    std::printf(
        "\npair rank %d -> rank %d   (GB/s = 1e9 B/s; latency = half round trip of put_signal / TCP "
        "ping-pong)\n",
        pair["sender"].get<int>(), pair["receiver"].get<int>());
    std::printf("%10s %12s %12s %9s %12s %14s %14s\n", "size", "put GB/s", "tcp GB/s", "put/tcp",
                "memcpy GB/s", "put lat us", "tcp lat us");
    for (const auto& row : pair["results"]) {
      std::string ratio = "-";
      if (row.contains("tcp_gbps") && row["tcp_gbps"].get<double>() > 0) {
        char text[16];
        std::snprintf(text, sizeof text, "%.0f%%",
                      100.0 * row["put_gbps"].get<double>() / row["tcp_gbps"].get<double>());
        ratio = text;
      }
      std::printf("%10s %12s %12s %9s %12s %14s %14s\n", format_size(row["bytes"].get<std::size_t>()).c_str(),
                  number(row, "put_gbps", "%.3f").c_str(), number(row, "tcp_gbps", "%.3f").c_str(),
                  ratio.c_str(), number(row, "memcpy_gbps", "%.2f").c_str(),
                  number(row, "put_latency_us", "%.1f").c_str(),
                  number(row, "tcp_latency_us", "%.1f").c_str());
    }
  }
  std::fflush(stdout);
}

}  // namespace ferry::tools
