// The bootstrap store: client operations, collectives across threads, timeouts that name what is missing, and
// a server that survives hostile or broken peers. Everything runs in-process on loopback.
//
// The raw-socket tests encode frames by hand from the wire format documented in store_protocol.hpp (20-byte
// little-endian header: magic, version, opcode, key_len, value_len), independently of the library's encoder
// (store_test_support.hpp). Authentication limits and key lifetimes: test_store_security.cpp and
// test_store_lifetime.cpp.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <optional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/skip.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/store.hpp"
#include "store_test_support.hpp"

using namespace store_test;

TEST_CASE("store: set, get, check and add round trip", "[store]") {
  StoreServer server(server_options());
  REQUIRE(server.port() != 0);
  Store store(client_options(server));

  REQUIRE_FALSE(store.check("alpha"));
  store.set("alpha", bytes_of("one"));
  REQUIRE(store.check("alpha"));
  REQUIRE(store.get("alpha") == bytes_of("one"));
  store.set("alpha", bytes_of("two"));  // overwrite
  REQUIRE(store.get("alpha") == bytes_of("two"));

  store.set("empty", {});
  REQUIRE(store.get("empty").empty());

  REQUIRE(store.add("counter", 5) == 5);
  REQUIRE(store.add("counter", -7) == -2);
  REQUIRE(store.add("counter", 0) == -2);
  REQUIRE(store.check("counter"));

  // A second client sees the same data.
  Store other(client_options(server));
  REQUIRE(other.get("alpha") == bytes_of("two"));
  REQUIRE(other.add("counter", 2) == 0);

  store.wait({"alpha", "empty", "counter"});
  REQUIRE(store.local_address() == "127.0.0.1");
  REQUIRE(store.endpoint() == "127.0.0.1:" + std::to_string(server.port()));
}

TEST_CASE("store: large values survive the round trip", "[store]") {
  StoreServer server(server_options());
  Store store(client_options(server));
  Bytes big(8u << 20);
  std::mt19937 random(7);
  for (auto& byte : big) byte = static_cast<std::uint8_t>(random());
  store.set("big", big);
  Store reader(client_options(server));
  REQUIRE(reader.get("big") == big);
}

TEST_CASE("store: add on a key that is not a counter is refused, connection stays usable", "[store]") {
  StoreServer server(server_options());
  Store store(client_options(server));
  store.set("text", bytes_of("abc"));
  auto error = expect_error([&] { store.add("text", 1); });
  REQUIRE(error.code() == Errc::invalid_argument);
  REQUIRE_THAT(error.what(), Catch::Contains("'text'") && Catch::Contains("not a 64-bit counter"));
  REQUIRE(store.get("text") == bytes_of("abc"));
}

TEST_CASE("store: get waits for a set from another thread", "[store]") {
  StoreServer server(server_options());
  Store waiter(client_options(server));
  std::thread setter([&] {
    std::this_thread::sleep_for(150ms);
    Store store(client_options(server));
    store.set("late", bytes_of("here"));
  });
  auto start = Clock::now();
  Bytes value = waiter.get("late", 5s);
  double waited = seconds_since(start);
  setter.join();
  REQUIRE(value == bytes_of("here"));
  REQUIRE(waited >= 0.1);
  REQUIRE(waited < 3.0);
}

TEST_CASE("store: get timeout names the key, fires at the deadline, and leaves the client usable",
          "[store]") {
  StoreServer server(server_options());
  Store store(client_options(server));
  auto start = Clock::now();
  auto error = expect_error([&] { store.get("absent/key", 300ms); });
  double waited = seconds_since(start);
  REQUIRE(error.code() == Errc::timeout);
  REQUIRE_THAT(error.what(), Catch::Contains("'absent/key'") && Catch::Contains("300 ms"));
  REQUIRE(waited >= 0.29);
  REQUIRE(waited < 0.3 + std::chrono::duration<double>(kSlack).count());

  store.set("present", bytes_of("x"));
  REQUIRE(store.get("present", 300ms) == bytes_of("x"));
  // A zero budget answers at once.
  REQUIRE_THROWS_AS(store.get("absent/key", 0ms), ferry::Error);
}

TEST_CASE("store: wait names every missing key", "[store]") {
  StoreServer server(server_options());
  Store store(client_options(server));
  store.set("a", {});
  store.set("c", {});
  auto error = expect_error([&] { store.wait({"a", "b", "c", "d"}, 300ms); });
  REQUIRE(error.code() == Errc::timeout);
  REQUIRE_THAT(error.what(), Catch::Contains("2 of 4 keys") && Catch::Contains("'b', 'd'"));
}

TEST_CASE("store: add is exact under contention", "[store]") {
  StoreServer server(server_options());
  constexpr int kThreads = 8;
  constexpr int kAdds = 1000;
  std::vector<std::vector<std::int64_t>> seen(kThreads);
  std::vector<int> ranks(kThreads);
  for (int i = 0; i < kThreads; ++i) ranks[i] = i;
  auto outcomes = run_ranks(server, ranks, [&](Store& store, int rank) {
    for (int i = 0; i < kAdds; ++i) seen[rank].push_back(store.add("contended", 1));
  });
  for (const auto& outcome : outcomes) REQUIRE(outcome.ok);
  // Every intermediate total was handed out exactly once.
  std::vector<std::int64_t> all;
  for (const auto& values : seen) all.insert(all.end(), values.begin(), values.end());
  std::sort(all.begin(), all.end());
  REQUIRE(all.size() == std::size_t{kThreads * kAdds});
  for (std::size_t i = 0; i < all.size(); ++i) REQUIRE(all[i] == static_cast<std::int64_t>(i + 1));
  Store store(client_options(server));
  REQUIRE(store.add("contended", 0) == kThreads * kAdds);
}

TEST_CASE("store: repeated barriers hold every rank until all arrive", "[store]") {
  StoreServer server(server_options());
  constexpr int kWorld = 8;
  constexpr int kRounds = 25;
  std::vector<std::atomic<int>> arrived(kRounds);
  std::vector<std::atomic<int>> violations(kRounds);
  std::vector<int> ranks(kWorld);
  for (int i = 0; i < kWorld; ++i) ranks[i] = i;
  auto outcomes = run_ranks(server, ranks, [&](Store& store, int rank) {
    for (int round = 0; round < kRounds; ++round) {
      if ((rank + round) % 3 == 0) std::this_thread::sleep_for(1ms);  // vary the arrival order
      arrived[round].fetch_add(1);
      store.barrier("steps", rank, kWorld);
      if (arrived[round].load() != kWorld) violations[round].fetch_add(1);
    }
  });
  for (const auto& outcome : outcomes) {
    INFO(outcome.error);
    REQUIRE(outcome.ok);
  }
  for (int round = 0; round < kRounds; ++round) REQUIRE(violations[round].load() == 0);
}

TEST_CASE("store: all_gather returns every rank's bytes, round after round", "[store]") {
  StoreServer server(server_options());
  constexpr int kWorld = 6;
  constexpr int kRounds = 5;
  std::uint32_t seed = test_seed();
  std::cout << "test_store all_gather seed " << seed << " (set FERRY_TEST_SEED to replay)" << std::endl;
  INFO("seed " << seed);
  std::mt19937 random(seed);
  // expected[round][rank]: random lengths including empty.
  std::vector<std::vector<Bytes>> expected(kRounds, std::vector<Bytes>(kWorld));
  for (auto& round : expected) {
    for (auto& value : round) {
      value.resize(random() % 3 == 0 ? 0 : random() % 5000);
      for (auto& byte : value) byte = static_cast<std::uint8_t>(random());
    }
  }
  std::vector<std::vector<std::vector<Bytes>>> got(kWorld, std::vector<std::vector<Bytes>>(kRounds));
  std::vector<int> ranks(kWorld);
  for (int i = 0; i < kWorld; ++i) ranks[i] = i;
  auto outcomes = run_ranks(server, ranks, [&](Store& store, int rank) {
    for (int round = 0; round < kRounds; ++round) {
      got[rank][round] = store.all_gather("addresses", rank, kWorld, expected[round][rank]);
      // Interleave barriers under the same name: its round counter is shared, so keys never collide.
      store.barrier("addresses", rank, kWorld);
    }
  });
  for (const auto& outcome : outcomes) {
    INFO(outcome.error);
    REQUIRE(outcome.ok);
  }
  for (int rank = 0; rank < kWorld; ++rank) {
    for (int round = 0; round < kRounds; ++round) REQUIRE(got[rank][round] == expected[round]);
  }
}

TEST_CASE("store: a one-rank world needs nobody else", "[store]") {
  StoreServer server(server_options());
  Store store(client_options(server));
  store.barrier("solo", 0, 1);
  auto gathered = store.all_gather("solo", 0, 1, bytes_of("me"));
  REQUIRE(gathered == std::vector<Bytes>{bytes_of("me")});
  REQUIRE_THROWS_AS(store.barrier("solo", 1, 1), ferry::Error);
  REQUIRE_THROWS_AS(store.all_gather("solo", 0, 0, {}), ferry::Error);
}

TEST_CASE("store: barrier timeout names the missing ranks", "[store]") {
  StoreServer server(server_options());
  auto outcomes = run_ranks(
      server, {0, 1, 2, 4, 6, 7}, [](Store& store, int rank) { store.barrier("init", rank, 8); }, 300ms);
  for (const auto& outcome : outcomes) {
    INFO(outcome.error);
    REQUIRE_FALSE(outcome.ok);
    REQUIRE(outcome.code == Errc::timeout);
    REQUIRE_THAT(
        outcome.error,
        Catch::Contains("barrier 'init' round 0 timed out after 300 ms waiting for ranks 3, 5 of 8"));
    REQUIRE(outcome.seconds >= 0.29);
    REQUIRE(outcome.seconds < 0.3 + std::chrono::duration<double>(kSlack).count());
  }
}

TEST_CASE("store: all_gather timeout names the missing ranks", "[store]") {
  StoreServer server(server_options());
  auto outcomes = run_ranks(
      server, {0, 2, 3},
      [](Store& store, int rank) {
        store.all_gather("handles", rank, 5, bytes_of("h" + std::to_string(rank)));
      },
      300ms);
  for (const auto& outcome : outcomes) {
    INFO(outcome.error);
    REQUIRE_FALSE(outcome.ok);
    REQUIRE(outcome.code == Errc::timeout);
    REQUIRE_THAT(outcome.error,
                 Catch::Contains("all_gather 'handles' round 0 timed out after 300 ms waiting for "
                                 "ranks 1, 4 of 5"));
    REQUIRE(outcome.seconds < 0.3 + std::chrono::duration<double>(kSlack).count());
  }
}

TEST_CASE("store: a wrong secret is rejected with a clear error", "[store]") {
  StoreServer server(server_options());
  StoreOptions options = client_options(server);
  options.secret = "not-the-secret";
  auto start = Clock::now();
  auto error = expect_error([&] { Store store(options); });
  REQUIRE(seconds_since(start) < 2.0);
  REQUIRE(error.code() == Errc::protocol);
  REQUIRE_THAT(error.what(), Catch::Contains("store at 127.0.0.1:" + std::to_string(server.port()) +
                                             " rejected the job secret"));
  // A secret that is a prefix of the real one, and an empty one, are wrong too.
  options.secret = "job-secret";
  REQUIRE(expect_error([&] { Store store(options); }).code() == Errc::protocol);
  options.secret = "";
  REQUIRE(expect_error([&] { Store store(options); }).code() == Errc::protocol);
  require_server_healthy(server, "wrong secret");
}

TEST_CASE("store: the raw wire format matches the documentation", "[store]") {
  StoreServer server(server_options());
  RawClient raw(server.port());
  raw.hello();
  raw.send(raw_frame(kSet, "wire/key", bytes_of("wire-value")));
  auto reply = raw.read_frame();
  REQUIRE(reply.has_value());
  REQUIRE(reply->opcode == kOk);
  REQUIRE(reply->key == "wire/key");

  Bytes delta;
  put_le(delta, static_cast<std::uint64_t>(std::int64_t{-3}), 8);
  raw.send(raw_frame(kAdd, "wire/counter", delta));
  reply = raw.read_frame();
  REQUIRE(reply.has_value());
  REQUIRE(reply->opcode == kValue);
  REQUIRE(reply->value.size() == 8);
  REQUIRE(reply->value[0] == 0xfd);  // -3 little-endian
  REQUIRE(reply->value[7] == 0xff);

  raw.send(raw_frame(kCheck, "wire/missing", {}));
  reply = raw.read_frame();
  REQUIRE(reply.has_value());
  REQUIRE(reply->opcode == kValue);
  REQUIRE(reply->value == Bytes{0});

  // Two pipelined requests are answered in order.
  Bytes budget;
  put_le(budget, 0, 8);
  Bytes both = raw_frame(kGet, "wire/key", budget);
  Bytes second = raw_frame(kCheck, "wire/key", {});
  both.insert(both.end(), second.begin(), second.end());
  raw.send(both);
  reply = raw.read_frame();
  REQUIRE(reply.has_value());
  REQUIRE(reply->opcode == kValue);
  REQUIRE(reply->value == bytes_of("wire-value"));
  reply = raw.read_frame();
  REQUIRE(reply.has_value());
  REQUIRE(reply->value == Bytes{1});

  Store store(client_options(server));
  REQUIRE(store.get("wire/key") == bytes_of("wire-value"));
  REQUIRE(store.add("wire/counter", 3) == 0);
}

TEST_CASE("store: the server survives hostile and broken clients", "[store]") {
  StoreServer server(server_options());

  SECTION("garbage bytes") {
    RawClient raw(server.port());
    raw.send(bytes_of("GET / HTTP/1.1\r\nHost: example\r\n\r\n"));
    REQUIRE(raw.closed_by_server());
    require_server_healthy(server, "garbage");
  }
  SECTION("a frame before HELLO") {
    RawClient raw(server.port());
    raw.send(raw_frame(kSet, "sneaky", bytes_of("value")));
    auto reply = raw.read_frame();
    REQUIRE(reply.has_value());
    REQUIRE(reply->opcode == kError);
    REQUIRE_THAT(std::string(reply->value.begin(), reply->value.end()),
                 Catch::Contains("SET frame where authentication expects HELLO"));
    REQUIRE(raw.closed_by_server());
    Store store(client_options(server));
    REQUIRE_FALSE(store.check("sneaky"));
  }
  SECTION("an oversized value in the header") {
    RawClient raw(server.port());
    raw.hello();
    raw.send(raw_header(kSet, 3, std::uint64_t{1} << 40));
    auto reply = raw.read_frame();
    REQUIRE(reply.has_value());
    REQUIRE(reply->opcode == kError);
    REQUIRE_THAT(std::string(reply->value.begin(), reply->value.end()),
                 Catch::Contains("exceeds max_message_bytes"));
    REQUIRE(raw.closed_by_server());
    require_server_healthy(server, "oversized value");
  }
  SECTION("an oversized key, a bad version, an unknown opcode, a bad magic") {
    for (const Bytes& header : {raw_header(kSet, 4097, 0), raw_header(kSet, 1, 0, kMagic, 1),
                                raw_header(0x7777, 1, 0), raw_header(kSet, 1, 0, 0xdeadbeef)}) {
      RawClient raw(server.port());
      raw.hello();
      raw.send(header);
      REQUIRE(raw.closed_by_server());
    }
    require_server_healthy(server, "bad headers");
  }
  SECTION("half a header, then silence") {
    RawClient stalled(server.port());
    stalled.hello();
    Bytes half = raw_header(kSet, 1, 1);
    half.resize(9);
    stalled.send(half);
    RawClient silent(server.port());  // never even says HELLO
    silent.send(Bytes{0x46, 0x52});
    require_server_healthy(server, "stalled clients");
    // The stalled connection is still open, and still works once it finishes its frame.
    Bytes rest = raw_header(kSet, 1, 1);
    rest.erase(rest.begin(), rest.begin() + 9);
    rest.push_back('k');
    rest.push_back('v');
    stalled.send(rest);
    auto reply = stalled.read_frame();
    REQUIRE(reply.has_value());
    REQUIRE(reply->opcode == kOk);
  }
  SECTION("a client that never reads its replies") {
    Store writer(client_options(server));
    writer.set("bulk", Bytes(1u << 20, 0xab));
    RawClient hog(server.port());
    hog.hello();
    Bytes budget;
    put_le(budget, 0, 8);
    Bytes request = raw_frame(kGet, "bulk", budget);
    Bytes many;
    for (int i = 0; i < 64; ++i) many.insert(many.end(), request.begin(), request.end());
    hog.send(many);  // 64 MiB of replies the hog never reads
    require_server_healthy(server, "non-reading client");
  }
  SECTION("a second HELLO and a reply opcode from a client") {
    for (std::uint16_t opcode : {std::uint16_t{kHello}, std::uint16_t{kOk}}) {
      RawClient raw(server.port());
      raw.hello();
      raw.send(raw_frame(opcode, "", {}));
      REQUIRE(raw.closed_by_server());
    }
    require_server_healthy(server, "bad opcodes");
  }
  SECTION("random frames") {
    std::uint32_t seed = test_seed();
    std::cout << "test_store random-frames seed " << seed << " (set FERRY_TEST_SEED to replay)" << std::endl;
    INFO("seed " << seed);
    std::mt19937 random(seed);
    for (int trial = 0; trial < 40; ++trial) {
      RawClient raw(server.port());
      if (trial % 2 == 0) raw.hello();
      // Valid magic and version with random opcode and lengths, or fully random bytes.
      Bytes junk = trial % 4 < 2 ? raw_header(static_cast<std::uint16_t>(random() % 8),
                                              static_cast<std::uint32_t>(random() % 6000), random() % 100000)
                                 : Bytes{};
      std::size_t extra = random() % 200;
      for (std::size_t i = 0; i < extra; ++i) junk.push_back(static_cast<std::uint8_t>(random()));
      raw.send(junk);
    }
    require_server_healthy(server, "random frames");
  }
}

TEST_CASE("store: a connection that never authenticates is closed at the server's deadline", "[store]") {
  StoreServer server(server_options(300ms));
  RawClient silent(server.port());
  auto start = Clock::now();
  REQUIRE(silent.closed_by_server(3000ms));
  REQUIRE(seconds_since(start) >= 0.25);
  require_server_healthy(server, "silent client");
}

TEST_CASE("store: a client with a larger size limit than the server is told why it was dropped", "[store]") {
  StoreOptions options = server_options();
  options.max_message_bytes = 1024;
  StoreServer server(options);
  Store store(client_options(server));  // default limit: 64 MiB
  auto error = expect_error([&] { store.set("too-big", Bytes(4096, 1)); });
  REQUIRE(error.code() == Errc::protocol);
  REQUIRE_THAT(error.what(), Catch::Contains("exceeds max_message_bytes 1024"));
  // The client-side limit is checked before anything is sent.
  StoreOptions small = client_options(server);
  small.max_message_bytes = 16;
  Store careful(small);
  REQUIRE(expect_error([&] { careful.set("k", Bytes(17, 0)); }).code() == Errc::invalid_argument);
  careful.set("k", Bytes(16, 0));
}

TEST_CASE("store: server destroyed while a client waits gives a prompt peer failure", "[store]") {
  auto server = std::make_unique<StoreServer>(server_options());
  Store store(client_options(*server, 30000ms));
  std::thread killer([&] {
    std::this_thread::sleep_for(200ms);
    server.reset();
  });
  auto start = Clock::now();
  auto error = expect_error([&] { store.get("never", 30s); });
  double waited = seconds_since(start);
  killer.join();
  REQUIRE(error.code() == Errc::peer_failure);
  REQUIRE_THAT(error.what(), Catch::Contains("lost connection to the store at 127.0.0.1:"));
  REQUIRE(waited < 5.0);
  // Later calls fail at once with the same reason instead of hanging.
  auto later = expect_error([&] { store.set("x", {}); });
  REQUIRE(later.code() == Errc::peer_failure);
  REQUIRE_THAT(later.what(), Catch::Contains("lost connection"));
}

TEST_CASE("store: port 0 picks distinct free ports", "[store]") {
  StoreServer first(server_options());
  StoreServer second(server_options());
  REQUIRE(first.port() != 0);
  REQUIRE(second.port() != 0);
  REQUIRE(first.port() != second.port());
}

TEST_CASE("store: a client retries until the server comes up, or times out naming it", "[store]") {
  std::uint16_t port = 0;
  {
    StoreServer probe(server_options());
    port = probe.port();
  }
  StoreOptions options = server_options(300ms);
  options.port = port;

  auto start = Clock::now();
  auto error = expect_error([&] { Store store(options); });
  REQUIRE(error.code() == Errc::timeout);
  REQUIRE_THAT(error.what(), Catch::Contains("127.0.0.1:" + std::to_string(port)) &&
                                 Catch::Contains("not reachable within 300 ms"));
  REQUIRE(seconds_since(start) < 0.3 + std::chrono::duration<double>(kSlack).count());

  options.timeout = 10s;
  std::optional<StoreServer> server;
  std::thread starter([&] {
    std::this_thread::sleep_for(300ms);
    StoreOptions server_side = server_options();
    server_side.port = port;
    server.emplace(server_side);
  });
  std::optional<std::string> failure;
  try {
    Store store(options);
    store.set("up", {});
  } catch (const ferry::Error& late) {
    failure = late.what();
  }
  starter.join();
  INFO(failure.value_or(""));
  REQUIRE_FALSE(failure.has_value());
}

TEST_CASE("store: many clients at once", "[store]") {
  StoreServer server(server_options());
  std::vector<std::unique_ptr<Store>> clients;
  for (int i = 0; i < 128; ++i) clients.push_back(std::make_unique<Store>(client_options(server)));
  for (int i = 0; i < 128; ++i) clients[i]->set("client/" + std::to_string(i), bytes_of(std::to_string(i)));
  for (int i = 0; i < 128; ++i) {
    REQUIRE(clients[(i + 1) % 128]->get("client/" + std::to_string(i)) == bytes_of(std::to_string(i)));
  }
}

TEST_CASE("store: host names and IPv6", "[store]") {
  StoreOptions options = server_options();
  options.host = "localhost";
  StoreServer by_name(options);
  options.port = by_name.port();
  Store client(options);
  client.set("k", bytes_of("v"));
  REQUIRE(client.get("k") == bytes_of("v"));

  StoreOptions v6 = server_options();
  v6.host = "::1";
  std::unique_ptr<StoreServer> server;
  try {
    server = std::make_unique<StoreServer>(v6);
  } catch (const ferry::Error& error) {
    ferry::test::skip(std::string("IPv6 loopback unavailable: ") + error.what());
  }
  v6.port = server->port();
  Store store(v6);
  REQUIRE(store.endpoint() == "[::1]:" + std::to_string(server->port()));
  REQUIRE(store.local_address() == "::1");
  store.set("six", bytes_of("6"));
  REQUIRE(store.get("six") == bytes_of("6"));
}
