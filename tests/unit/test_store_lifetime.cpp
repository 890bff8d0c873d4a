// How long keys live: ERASE removes a prefix, StoreStats counts what is held, and barriers and all-gathers
// erase their rounds once every rank is done with them, so repeating them leaves the server's memory flat.
#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <string>
#include <thread>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/transport/store.hpp"
#include "store_test_support.hpp"

using namespace store_test;

TEST_CASE("store lifetime: erase_prefix removes exactly the keys under a prefix", "[store][lifetime]") {
  StoreServer server(server_options());
  Store store(client_options(server));
  store.set("job/a/1", bytes_of("x"));
  store.set("job/a/2", bytes_of("yy"));
  store.add("job/a/count", 3);
  store.set("job/ab", bytes_of("neighbour"));
  store.set("job/b/1", bytes_of("other"));
  CHECK(store.erase_prefix("job/a/") == 3);
  CHECK_FALSE(store.check("job/a/1"));
  CHECK_FALSE(store.check("job/a/count"));
  CHECK(store.check("job/ab"));
  CHECK(store.check("job/b/1"));
  CHECK(store.erase_prefix("job/a/") == 0);
  CHECK(store.add("job/a/count", 1) == 1);                // a counter starts over at 0
  CHECK_THROWS_AS(store.erase_prefix(""), ferry::Error);  // no key prefix: it would mean every key

  // A client's key prefix confines it to its own keys.
  StoreOptions confined = client_options(server);
  confined.key_prefix = "job/b/";
  Store sub(confined);
  CHECK(sub.erase_prefix("1") == 1);
  CHECK(store.check("job/ab"));
}

TEST_CASE("store lifetime: a GET parked on an erased key waits for its next set", "[store][lifetime]") {
  StoreServer server(server_options());
  Store writer(client_options(server));
  auto waiting = std::async(std::launch::async, [&] {
    Store reader(client_options(server));
    return reader.get("late");
  });
  std::this_thread::sleep_for(50ms);
  CHECK(writer.erase_prefix("late") == 0);
  writer.set("late", bytes_of("here"));
  CHECK(waiting.get() == bytes_of("here"));
}

TEST_CASE("store lifetime: stats count keys and bytes held", "[store][lifetime]") {
  StoreServer server(server_options());
  Store store(client_options(server));
  CHECK(server.stats().keys == 0);
  CHECK(server.stats().bytes == 0);
  store.set("k", bytes_of("1234"));
  CHECK(server.stats().keys == 1);
  CHECK(server.stats().bytes == 1 + 4);
  store.set("k", bytes_of("12"));  // overwrite
  CHECK(server.stats().bytes == 1 + 2);
  store.add("counter", 5);
  CHECK(server.stats().keys == 2);
  CHECK(server.stats().bytes == 3 + 7 + 8);
  auto remote = store.server_stats();  // the same numbers over the wire
  CHECK(remote.keys == 2);
  CHECK(remote.bytes == 18);
  CHECK(remote.connections == 1);
  store.erase_prefix("k");
  store.erase_prefix("counter");
  CHECK(server.stats().keys == 0);
  CHECK(server.stats().bytes == 0);
}

TEST_CASE("store lifetime: repeated barriers and all-gathers leave no keys behind", "[store][lifetime]") {
  StoreServer server(server_options());
  constexpr int kWorld = 4;
  constexpr int kRounds = 100;
  auto outcomes = run_ranks(server, {0, 1, 2, 3}, [&](Store& store, int rank) {
    for (int round = 0; round < kRounds; ++round) {
      store.barrier("loop", rank, kWorld);
      Bytes mine(32, static_cast<std::uint8_t>(rank + round));
      auto all = store.all_gather("loop", rank, kWorld, mine);  // the same name: one round counter
      for (int peer = 0; peer < kWorld; ++peer) {
        if (all[peer] != Bytes(32, static_cast<std::uint8_t>(peer + round)))
          throw std::runtime_error("round " + std::to_string(round) + ": wrong bytes from " +
                                   std::to_string(peer));
      }
      // Another name, with a one-rank world: it cleans up after itself too.
      store.barrier("solo" + std::to_string(rank), 0, 1);
    }
  });
  for (const auto& outcome : outcomes) CHECK(outcome.error == "");
  auto stats = server.stats();
  CHECK(stats.keys == 0);
  CHECK(stats.bytes == 0);
}
