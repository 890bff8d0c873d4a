// The proxy with scripted fabrics (in-process): order, wraparound and credits through real proxy threads, the
// in-flight bound, errors reaching the producer instead of a hang, stop, and several threads and rings.
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "common/seed.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/proxy.hpp"
#include "scripted_fabric.hpp"

using namespace std::chrono_literals;
using namespace ferry::transport;
using Catch::Matchers::Contains;
using ferry::Errc;
using ferry::test::expected_op;
using ferry::test::RecordedOp;
using ferry::test::ScriptedFabric;
using ferry::test::ScriptedFabricOptions;

namespace {

ProxyOptions test_options(int rings = 1, std::uint32_t slots = 8, std::size_t max_in_flight = 64) {
  ProxyOptions options;
  options.rings = rings;
  options.ring_slots = slots;
  options.max_in_flight = max_in_flight;
  options.memory = RingMemory::host;
  options.timeout = 20s;
  return options;
}

// A random but valid command; `tag` lands in local_offset's high bits so the ring of origin can be told
// apart.
Command random_command(std::mt19937_64& rng, std::uint64_t tag) {
  std::uint64_t n = rng();
  auto peer = static_cast<std::uint16_t>(n % 9);
  auto region = static_cast<std::uint8_t>((n >> 8) % 3);
  std::uint64_t local = (tag << 40) | ((n >> 12) & 0xffffff);
  std::uint64_t remote = rng() & 0xffffffffff;
  auto bytes = static_cast<std::uint32_t>((n >> 36) & 0xfffff);
  auto signal = static_cast<std::uint32_t>(rng() & 0xfffffff8u);
  auto add = static_cast<std::uint32_t>(1 + (n >> 56));
  switch (n % 3) {
    case 0:
      return make_put(peer, region, local, remote, bytes);
    case 1:
      return make_put_signal(peer, region, local, remote, bytes, signal, add);
    default:
      return make_atomic_add(peer, region, signal, add);
  }
}

}  // namespace

TEST_CASE("proxy executes commands in posting order through many wraparounds", "[unit][proxy]") {
  auto seed = ferry::test::announce_seed("proxy wraparounds");
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  auto fabric = std::make_unique<ScriptedFabric>();
  ScriptedFabric* seen = fabric.get();
  Proxy proxy(std::move(fabric), test_options(1, 8));
  ProducerRing& ring = proxy.ring(0);

  std::vector<Command> posted;
  for (int i = 0; i < 20000; ++i) {
    posted.push_back(random_command(rng, 0));
    ring.post(posted.back());
  }
  CHECK(ring.posted() == posted.size());
  ring.wait_completed(ring.posted());
  CHECK(ring.completed() == posted.size());

  auto ops = seen->ops();
  REQUIRE(ops.size() == posted.size());
  for (std::size_t i = 0; i < ops.size(); ++i) {
    INFO("command " << i);
    REQUIRE(ops[i] == expected_op(posted[i]));
  }
  CHECK(proxy.commands_executed(0) == posted.size());
  CHECK_NOTHROW(proxy.check_error());
}

TEST_CASE("a stalled proxy admits exactly `capacity` commands, then post times out naming the ring",
          "[unit][proxy]") {
  ScriptedFabricOptions script;
  script.block_first = true;
  auto fabric = std::make_unique<ScriptedFabric>(script);
  ScriptedFabric* control = fabric.get();
  auto options = test_options(1, 16);
  options.timeout = 300ms;
  Proxy proxy(std::move(fabric), options);
  ProducerRing& ring = proxy.ring(0);

  for (int i = 0; i < 16; ++i) REQUIRE(ring.try_post(make_put(1, 0, i, i, 8)));
  CHECK_FALSE(ring.try_post(make_put(1, 0, 16, 16, 8)));
  auto start = ferry::Clock::now();
  try {
    ring.post(make_put(1, 0, 16, 16, 8));
    FAIL("post into a full ring of a stalled proxy returned");
  } catch (const ferry::Error& e) {
    CHECK(e.code() == Errc::timeout);
    CHECK_THAT(e.what(), Contains("command ring 0") && Contains("posted 16") && Contains("no free slot"));
  }
  CHECK(ferry::Clock::now() - start >= 300ms);
  CHECK(ring.posted() == 16);

  control->release();
  ring.post(make_put(1, 0, 16, 16, 8));  // credit comes back once the proxy moves
  ring.wait_completed(17);
  CHECK(control->ops().size() == 17);
}

TEST_CASE("wait_completed times out naming the counters when the fabric never completes", "[unit][proxy]") {
  ScriptedFabricOptions script;
  script.never_complete = true;
  auto options = test_options();
  options.timeout = 200ms;
  Proxy proxy(std::make_unique<ScriptedFabric>(script), options);
  ProducerRing& ring = proxy.ring(0);
  CHECK_THROWS_WITH(ring.wait_completed(1), Contains("more than were posted"));
  ring.post(make_put(1, 0, 0, 0, 8));
  auto start = ferry::Clock::now();
  try {
    ring.wait_completed(1);
    FAIL("wait_completed returned although nothing completed");
  } catch (const ferry::Error& e) {
    CHECK(e.code() == Errc::timeout);
    CHECK_THAT(e.what(), Contains("command ring 0") && Contains("posted 1") && Contains("completed 0") &&
                             Contains("1 completions not reached within 200 ms"));
  }
  CHECK(ferry::Clock::now() - start >= 200ms);
}

TEST_CASE("the proxy bounds operations in flight and progresses the fabric to retire them", "[unit][proxy]") {
  ScriptedFabricOptions script;
  script.complete_at_once = false;  // one completion per progress() call
  auto fabric = std::make_unique<ScriptedFabric>(script);
  ScriptedFabric* seen = fabric.get();
  Proxy proxy(std::move(fabric), test_options(1, 64, 4));
  ProducerRing& ring = proxy.ring(0);
  for (int i = 0; i < 2000; ++i) ring.post(make_put_signal(2, 0, i, i, 16, 8, 1));
  ring.wait_completed(2000);
  CHECK(seen->max_outstanding() >= 1);
  CHECK(seen->max_outstanding() <= 4);
  CHECK(seen->progress_calls() >= 2000);
}

TEST_CASE("nop and flush complete in ring order", "[unit][proxy]") {
  ScriptedFabricOptions script;
  script.complete_at_once = false;
  auto fabric = std::make_unique<ScriptedFabric>(script);
  ScriptedFabric* seen = fabric.get();
  Proxy proxy(std::move(fabric), test_options(1, 8, 16));
  ProducerRing& ring = proxy.ring(0);
  ring.post(make_put(1, 0, 0, 0, 8));
  ring.post(make_nop());
  ring.post(make_flush());
  ring.post(make_nop());
  ring.wait_completed(4);
  CHECK(seen->flushes() == 1);
  CHECK(seen->ops().size() == 1);  // nop and flush are not fabric operations
}

TEST_CASE("a peer the fabric isolates is published by the proxy, which goes on", "[unit][proxy]") {
  ScriptedFabricOptions script;
  script.isolate_after = 50;
  script.isolated_peer = 3;
  auto fabric = std::make_unique<ScriptedFabric>(script);
  Proxy proxy(std::move(fabric), test_options(1, 32));
  ProducerRing& ring = proxy.ring(0);
  CHECK(proxy.failed_peer_count() == 0);
  for (int i = 0; i < 200; ++i)
    ring.post(make_put_signal(static_cast<std::uint16_t>(i % 4), 0, i, i, 32, 0, 1));
  ring.wait_completed(ring.posted());  // no error: the other peers' commands all complete
  ferry::Deadline deadline(10s);
  while (proxy.failed_peer_count() == 0 && !deadline.expired()) std::this_thread::yield();
  REQUIRE(proxy.failed_peer_count() == 1);
  const auto failed = proxy.failed_peers();
  REQUIRE(failed.size() == 1);
  CHECK(failed[0].rank == 3);
  CHECK_THAT(failed[0].reason, Contains("injected isolation after 50 operations"));
  CHECK_NOTHROW(proxy.check_error());
  CHECK(ring.completed() == 200);
}

TEST_CASE("a fabric that throws reaches the producer as an error, not a hang", "[unit][proxy]") {
  ScriptedFabricOptions script;
  script.fail_after = 100;
  auto fabric = std::make_unique<ScriptedFabric>(script);
  auto options = test_options(1, 32);
  options.timeout = 60s;  // the error must arrive long before any deadline
  Proxy proxy(std::move(fabric), options);
  ProducerRing& ring = proxy.ring(0);
  auto start = ferry::Clock::now();

  std::string message;
  Errc code = Errc::internal;
  try {
    for (int i = 0; i < 100000; ++i) ring.post(make_put_signal(3, 0, i, i, 32, 0, 1));
    ring.wait_completed(ring.posted());
    FAIL("no error surfaced");
  } catch (const ferry::Error& e) {
    message = e.what();
    code = e.code();
  }
  CHECK(ferry::Clock::now() - start < 10s);
  CHECK(code == Errc::peer_failure);
  CHECK_THAT(message, Contains("injected failure after 100 operations"));
  CHECK_THAT(message,
             Contains("command ring 0") && Contains("command #100") && Contains("put_signal peer 3"));
  CHECK(ring.completed() == 100);
  // Every later wait and Proxy::check_error report the same failure.
  CHECK_THROWS_WITH(ring.wait_completed(ring.posted()), Contains("injected failure"));
  CHECK_THROWS_WITH(ring.post(make_nop()), Contains("injected failure"));
  CHECK_THROWS_WITH(proxy.check_error(), Contains("injected failure"));
}

TEST_CASE("a malformed command fails with a protocol error naming it", "[unit][proxy]") {
  Proxy proxy(std::make_unique<ScriptedFabric>(), test_options());
  ProducerRing& ring = proxy.ring(0);
  Command bad = make_nop();
  bad.op = static_cast<CommandOp>(42);
  ring.post(bad);
  try {
    ring.wait_completed(1);
    FAIL("a command with op 42 completed");
  } catch (const ferry::Error& e) {
    CHECK(e.code() == Errc::protocol);
    CHECK_THAT(e.what(), Contains("unknown command op 42"));
  }
}

TEST_CASE("stop makes waits fail with 'stopped' rather than time out", "[unit][proxy]") {
  ScriptedFabricOptions script;
  script.block_first = true;
  auto fabric = std::make_unique<ScriptedFabric>(script);
  ScriptedFabric* control = fabric.get();
  Proxy proxy(std::move(fabric), test_options());
  ProducerRing& ring = proxy.ring(0);
  ring.post(make_put(1, 0, 0, 0, 8));
  ring.post(make_put(1, 0, 8, 8, 8));
  control->release();
  ring.wait_completed(2);
  // Blocked again? No: only the first operation blocks. Stop, then the ring refuses further use.
  proxy.stop();
  CHECK_NOTHROW(proxy.check_error());  // a stop is not a failure
  CHECK_NOTHROW(ring.wait_completed(2));
  CHECK_THROWS_WITH(ring.post(make_nop()), Contains("proxy was stopped"));
  proxy.stop();  // idempotent
}

TEST_CASE("several proxy threads drain several rings, each ring in order", "[unit][proxy]") {
  auto seed = ferry::test::announce_seed("proxy threads");
  INFO("seed " << seed);
  constexpr int kThreads = 2;
  constexpr int kRings = 5;
  constexpr int kPerRing = 5000;
  std::vector<std::unique_ptr<Fabric>> fabrics;
  std::vector<ScriptedFabric*> seen;
  for (int t = 0; t < kThreads; ++t) {
    auto fabric = std::make_unique<ScriptedFabric>();
    seen.push_back(fabric.get());
    fabrics.push_back(std::move(fabric));
  }
  Proxy proxy(std::move(fabrics), test_options(kRings, 16, 32));
  REQUIRE(proxy.num_threads() == kThreads);
  REQUIRE(proxy.num_rings() == kRings);

  std::vector<std::vector<Command>> posted(kRings);
  std::vector<std::thread> producers;
  for (int r = 0; r < kRings; ++r) {
    producers.emplace_back([&, r] {
      std::mt19937_64 rng(seed + static_cast<std::uint64_t>(r));
      ProducerRing& ring = proxy.ring(r);
      for (int i = 0; i < kPerRing; ++i) {
        posted[r].push_back(random_command(rng, static_cast<std::uint64_t>(r)));
        ring.post(posted[r].back());
      }
      ring.wait_completed(kPerRing);
    });
  }
  for (auto& producer : producers) producer.join();

  for (int t = 0; t < kThreads; ++t) {
    auto ops = seen[t]->ops();
    std::vector<std::size_t> next(kRings, 0);
    std::size_t expected_total = 0;
    for (int r = t; r < kRings; r += kThreads) expected_total += kPerRing;
    CHECK(ops.size() == expected_total);
    CHECK(proxy.commands_executed(t) == expected_total);
    for (const RecordedOp& op : ops) {
      // atomic_add records carry no local offset; find the ring by matching the next expected command.
      bool matched = false;
      for (int r = t; r < kRings && !matched; r += kThreads) {
        if (next[r] < posted[r].size() && op == expected_op(posted[r][next[r]])) {
          ++next[r];
          matched = true;
        }
      }
      REQUIRE(matched);
    }
    for (int r = t; r < kRings; r += kThreads) CHECK(next[r] == kPerRing);
  }
}

TEST_CASE("proxy options and ring indices are validated", "[unit][proxy]") {
  auto options = test_options();
  options.ring_slots = 12;
  CHECK_THROWS_WITH(Proxy(std::make_unique<ScriptedFabric>(), options), Contains("ring_slots is 12"));
  options = test_options();
  options.rings = 0;
  CHECK_THROWS_WITH(Proxy(std::make_unique<ScriptedFabric>(), options), Contains("rings is 0"));
  options = test_options();
  options.max_in_flight = 0;
  CHECK_THROWS_WITH(Proxy(std::make_unique<ScriptedFabric>(), options), Contains("max_in_flight is 0"));
  CHECK_THROWS_WITH(Proxy(std::unique_ptr<Fabric>(), test_options()), Contains("fabric 0 is null"));
  Proxy proxy(std::make_unique<ScriptedFabric>(), test_options(2));
  CHECK_THROWS_WITH(proxy.ring(2), Contains("has 2 rings"));
  CHECK_THROWS_WITH(proxy.commands_executed(1), Contains("has 1 threads"));
}

TEST_CASE("host ring memory is not offered to kernels", "[unit][proxy]") {
  Proxy proxy(std::make_unique<ScriptedFabric>(), test_options());
  CHECK_FALSE(proxy.ring(0).device_mapped());
  CHECK_THROWS_AS(proxy.ring(0).device_view(), ferry::Error);
  // Automatic memory works everywhere: mapped where a GPU is, plain host memory elsewhere.
  auto options = test_options();
  options.memory = RingMemory::automatic;
  Proxy automatic(std::make_unique<ScriptedFabric>(), options);
  automatic.ring(0).post(make_nop());
  automatic.ring(0).wait_completed(1);
}
