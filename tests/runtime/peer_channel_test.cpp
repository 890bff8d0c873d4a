// PeerChannel with ranks as threads of this process (each rank its own Group and fabric): messages to self,
// argument checks, ordering and flow control between two ranks, timeouts and teardown.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "common/thread_check.hpp"
#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/peer_channel.hpp"

using namespace std::chrono_literals;
using Clock = std::chrono::steady_clock;

namespace {

std::uint16_t free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  socklen_t len = sizeof(addr);
  REQUIRE(getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  close(fd);
  return ntohs(addr.sin_port);
}

ferry::JobEnv job_for(int rank, int world, std::uint16_t port) {
  ferry::JobEnv job;
  job.launcher = ferry::Launcher::ferry;
  job.rank = rank;
  job.world_size = world;
  job.local_size = world;
  job.local_rank = rank;
  job.store_port = port;
  job.secret = "test-secret";
  job.job_id = "peer-channel-test-" + std::to_string(getpid()) + "-" + std::to_string(port);
  return job;
}

// Runs `body(group)` on `world` ranks, one thread each, and rethrows the first failure. Catch's assertions
// are not thread-safe: bodies throw instead of CHECKing.
template <typename Body>
void run_ranks(int world, Body body) {
  auto port = free_port();
  std::vector<std::future<void>> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.push_back(std::async(std::launch::async, [=] {
      ferry::GroupOptions options;
      options.timeout = 20s;
      auto group = ferry::Group::from_job(job_for(r, world, port), options);
      body(group);
    }));
  }
  for (auto& rank : ranks) rank.get();
}

using ferry::test::expect;  // rank threads throw, the main thread reports (common/thread_check.hpp)

std::vector<std::byte> pattern(std::size_t size, int seed) {
  std::vector<std::byte> bytes(size);
  for (std::size_t i = 0; i < size; ++i) bytes[i] = std::byte((i * 131 + std::size_t(seed) * 7919 + 17) >> 1);
  return bytes;
}

ferry::PeerChannelConfig small_config(std::size_t max_bytes = 4096, int slots = 2) {
  ferry::PeerChannelConfig config;
  config.max_message_bytes = max_bytes;
  config.slots_per_peer = slots;
  config.timeout = 10s;
  return config;
}

ferry::Group single_group() {
  ferry::JobEnv job;  // a single-rank job: the store picks its own port
  job.job_id = "peer-channel-single-" + std::to_string(getpid());
  return ferry::Group::from_job(job);
}

}  // namespace

TEST_CASE("peer channel on one rank: messages to self arrive in order, every byte", "[peer_channel]") {
  auto group = single_group();
  ferry::PeerChannel channel(group, small_config(4096, 3));
  CHECK(channel.rank() == 0);
  CHECK(channel.world_size() == 1);
  // More messages than slots, recvs issued first for half of them and after the sends for the rest.
  constexpr int kMessages = 20;
  std::vector<std::vector<std::byte>> out, in;
  for (int i = 0; i < kMessages; ++i) {
    out.push_back(pattern(std::size_t(i * 200), i));
    in.emplace_back(std::size_t(i * 200));
  }
  std::vector<ferry::Event> got, sent;
  for (int i = 0; i < kMessages / 2; ++i) got.push_back(channel.recv(0, in[i]));
  for (int i = 0; i < kMessages; ++i) sent.push_back(channel.send(0, out[i]));
  for (int i = kMessages / 2; i < kMessages; ++i) got.push_back(channel.recv(0, in[i]));
  for (auto& event : sent) event.wait();
  for (auto& event : got) event.wait();
  for (int i = 0; i < kMessages; ++i) CHECK(in[i] == out[i]);
  auto stats = channel.stats();
  CHECK(stats.messages_sent == kMessages);
  CHECK(stats.messages_received == kMessages);
  CHECK(stats.bytes_sent == 200 * kMessages * (kMessages - 1) / 2);
  CHECK(stats.bytes_received == stats.bytes_sent);
  auto times = sent.back().times();
  CHECK(times.issued <= times.started);
  CHECK(times.started <= times.finished);
}

TEST_CASE("peer channel rejects bad input naming it", "[peer_channel]") {
  auto group = single_group();
  SECTION("config") {
    auto config = small_config();
    config.slots_per_peer = 0;
    CHECK_THROWS_WITH(ferry::PeerChannel(group, config), Catch::Contains("slots_per_peer is 0"));
    config = small_config();
    config.timeout = 0s;
    CHECK_THROWS_WITH(ferry::PeerChannel(group, config), Catch::Contains("timeout"));
  }
  SECTION("peers and sizes") {
    ferry::PeerChannel channel(group, small_config(1000));
    std::vector<std::byte> bytes(10), big(1001);
    auto check_invalid = [](auto call, const std::string& needle) {
      try {
        call();
        FAIL("no exception; expected one naming " << needle);
      } catch (const ferry::Error& e) {
        CHECK(e.code() == ferry::Errc::invalid_argument);
        CHECK_THAT(e.what(), Catch::Contains(needle));
      }
    };
    check_invalid([&] { channel.send(1, bytes); }, "peer 1 is out of range (world size 1)");
    check_invalid([&] { channel.recv(-1, bytes); }, "peer -1 is out of range");
    check_invalid([&] { channel.send(0, big); },
                  "1001 bytes exceed PeerChannelConfig::max_message_bytes (1000)");
    check_invalid([&] { channel.recv(0, big); }, "1001 bytes exceed");
  }
  SECTION("size mismatch fails the recv naming both sizes; the next message still arrives") {
    ferry::PeerChannel channel(group, small_config(1000));
    auto first = pattern(300, 1), second = pattern(0, 2), third = pattern(1000, 3);
    std::vector<std::byte> small(299), empty, full(1000);
    channel.send(0, first);
    channel.send(0, second);
    channel.send(0, third);
    try {
      channel.recv(0, small).wait();
      FAIL("a 300-byte message was received into 299 bytes");
    } catch (const ferry::Error& e) {
      CHECK(e.code() == ferry::Errc::invalid_argument);
      CHECK_THAT(e.what(), Catch::Contains("the message is 300 bytes but the receive buffer is 299 bytes"));
      CHECK_THAT(e.what(), Catch::Contains("recv #0 from rank 0"));
    }
    channel.recv(0, empty).wait();
    channel.recv(0, full).wait();
    CHECK(full == third);
    CHECK(channel.stats().messages_received == 2);
  }
}

TEST_CASE("peer channel between 2 ranks: both directions at once, more messages than slots",
          "[peer_channel]") {
  constexpr int kMessages = 100;
  run_ranks(2, [](ferry::Group& group) {
    ferry::PeerChannel channel(group, small_config(8192, 2));
    const int peer = 1 - group.rank();
    std::vector<std::vector<std::byte>> out, in;
    for (int i = 0; i < kMessages; ++i) {
      out.push_back(pattern(std::size_t(i * 81 % 8193), group.rank() * 1000 + i));
      in.emplace_back(std::size_t(i * 81 % 8193));
    }
    // Every send first (most wait for credit), then every recv: the queues must not block each other.
    std::vector<ferry::Event> sent, got;
    for (auto& bytes : out) sent.push_back(channel.send(peer, bytes));
    for (auto& bytes : in) got.push_back(channel.recv(peer, bytes));
    for (auto& event : got) event.wait();
    for (auto& event : sent) event.wait();
    for (int i = 0; i < kMessages; ++i) {
      expect(in[i] == pattern(in[i].size(), peer * 1000 + i), "message " + std::to_string(i) + " corrupted");
    }
  });
}

TEST_CASE("peer channel: a send beyond the slots waits for the receiver's credit", "[peer_channel]") {
  run_ranks(2, [](ferry::Group& group) {
    ferry::PeerChannel channel(group, small_config(64, 2));
    auto bytes = pattern(64, 5);
    std::vector<std::byte> in(64);
    if (group.rank() == 0) {
      auto a = channel.send(1, bytes), b = channel.send(1, bytes), c = channel.send(1, bytes);
      a.wait();
      b.wait();
      std::this_thread::sleep_for(200ms);
      expect(!c.test(), "the third send completed with both slots full and no recv posted");
      group.barrier("credit");
      c.wait();
    } else {
      group.barrier("credit");
      for (int i = 0; i < 3; ++i) channel.recv(0, in).wait();
      expect(in == bytes, "payload corrupted");
    }
  });
}

TEST_CASE("peer channel: a recv from a silent peer fails within the timeout, naming it", "[peer_channel]") {
  run_ranks(2, [](ferry::Group& group) {
    auto config = small_config();
    config.timeout = 1s;
    ferry::PeerChannel channel(group, config);
    if (group.rank() == 0) {
      std::vector<std::byte> in(10);
      auto start = Clock::now();
      auto event = channel.recv(1, in);
      try {
        event.wait();
        expect(false, "the recv succeeded although rank 1 sent nothing");
      } catch (const ferry::Error& e) {
        double took = std::chrono::duration<double>(Clock::now() - start).count();
        expect(e.code() == ferry::Errc::timeout, std::string("expected a timeout: ") + e.what());
        expect(std::string(e.what()).find("no message arrived from rank 1 within 1 s") != std::string::npos,
               std::string("message: ") + e.what());
        // Not early; late only by what a loaded machine adds (the default timeout, 100 s, would be far past).
        expect(took >= 0.9 && took < 1.0 + 10.0, "failed after " + std::to_string(took) + " s");
      }
    }
    group.barrier("silent/done");
  });
}

TEST_CASE("peer channel: destruction finishes the operations already issued", "[peer_channel]") {
  run_ranks(2, [](ferry::Group& group) {
    std::vector<ferry::Event> events;
    auto bytes = pattern(4000, 9);
    std::vector<std::vector<std::byte>> in(4, std::vector<std::byte>(4000));
    {
      ferry::PeerChannel channel(group, small_config(4096, 2));
      for (int i = 0; i < 4; ++i) {
        events.push_back(group.rank() == 0 ? channel.send(1, bytes) : channel.recv(0, in[i]));
      }
    }  // rank 0's last sends need rank 1's credit: the destructors must still complete them
    for (auto& event : events) {
      expect(event.test(), "an operation was still pending after the channel was destroyed");
      event.wait();
    }
    if (group.rank() == 1) {
      for (auto& message : in) expect(message == bytes, "payload corrupted");
    }
  });
}
