// The command ring on its own (no proxy): layout shared with device code, credit arithmetic, wraparound of
// slot indices and of the 64-bit counters.
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <vector>

#include "ferry/transport/command_ring.hpp"

using namespace ferry::transport;

namespace {

// A ring in ordinary memory with the consumer side driven by hand.
struct HandRing {
  explicit HandRing(std::uint32_t capacity, std::uint64_t start = 0) : slots(capacity) {
    control.tail = start;
    control.head = start;
    control.completed = start;
    producer = CommandRingProducer{CommandRingView{slots.data(), &control, capacity}, start, start};
  }
  // Consumes one command the way the proxy does: acquire tail, copy the slot, release head.
  Command consume() {
    REQUIRE(ring_load_acquire(&control.tail) - control.head != 0);  // wrap-safe "not empty"
    Command command = slots[ring_slot_index(control.head, producer.ring.capacity)];
    ring_store_release(&control.head, control.head + 1);
    return command;
  }
  std::vector<Command> slots;
  CommandRingControl control{};
  CommandRingProducer producer{};
};

Command numbered(std::uint64_t n) {
  return make_put(static_cast<std::uint16_t>(n % 7), 1, n, n * 3, 64);
}

}  // namespace

TEST_CASE("command and control block have the layout device code relies on", "[unit][ring]") {
  STATIC_REQUIRE(sizeof(Command) == 32);
  STATIC_REQUIRE(offsetof(Command, op) == 0);
  STATIC_REQUIRE(offsetof(Command, region) == 1);
  STATIC_REQUIRE(offsetof(Command, peer) == 2);
  STATIC_REQUIRE(offsetof(Command, bytes) == 4);
  STATIC_REQUIRE(offsetof(Command, local_offset) == 8);
  STATIC_REQUIRE(offsetof(Command, remote_offset) == 16);
  STATIC_REQUIRE(offsetof(Command, signal_offset) == 24);
  STATIC_REQUIRE(offsetof(Command, signal_add) == 28);
  STATIC_REQUIRE(alignof(CommandRingControl) == 64);
  STATIC_REQUIRE(offsetof(CommandRingControl, tail) == 0);
  STATIC_REQUIRE(offsetof(CommandRingControl, head) == 64);
  STATIC_REQUIRE(offsetof(CommandRingControl, completed) == 128);
  STATIC_REQUIRE(offsetof(CommandRingControl, error) == 192);
}

TEST_CASE("command builders fill the fields they name", "[unit][ring]") {
  Command c = make_put_signal(5, 2, 100, 200, 300, 64, 9);
  CHECK(c.op == CommandOp::put_signal);
  CHECK(c.peer == 5);
  CHECK(c.region == 2);
  CHECK(c.local_offset == 100);
  CHECK(c.remote_offset == 200);
  CHECK(c.bytes == 300);
  CHECK(c.signal_offset == 64);
  CHECK(c.signal_add == 9);
  Command a = make_atomic_add(3, 1, 128, 7);
  CHECK(a.op == CommandOp::atomic_add);
  CHECK(a.peer == 3);
  CHECK(a.signal_offset == 128);
  CHECK(a.signal_add == 7);
  CHECK(a.bytes == 0);
  CHECK(make_flush().op == CommandOp::flush);
  CHECK(make_nop().op == CommandOp::nop);
}

TEST_CASE("ring capacity must be a power of two", "[unit][ring]") {
  CHECK(ring_capacity_ok(1));
  CHECK(ring_capacity_ok(2));
  CHECK(ring_capacity_ok(1024));
  CHECK(ring_capacity_ok(std::uint64_t{1} << 40));
  CHECK_FALSE(ring_capacity_ok(0));
  CHECK_FALSE(ring_capacity_ok(3));
  CHECK_FALSE(ring_capacity_ok(1000));
}

TEST_CASE("a full ring refuses commands until the consumer returns credit", "[unit][ring]") {
  HandRing ring(4);
  for (std::uint64_t n = 0; n < 4; ++n) REQUIRE(ring.producer.try_post(numbered(n)));
  CHECK(ring_credits(ring.producer.tail, ring.control.head, 4) == 0);
  CHECK_FALSE(ring.producer.try_post(numbered(4)));
  CHECK(ring.control.tail == 4);  // a refused post publishes nothing

  CHECK(ring.consume().local_offset == 0);
  REQUIRE(ring.producer.try_post(numbered(4)));
  CHECK_FALSE(ring.producer.try_post(numbered(5)));
  // The producer re-reads head only when its cached credit runs out.
  CHECK(ring.producer.head_seen == 1);
}

TEST_CASE("slots wrap around and commands come out in order", "[unit][ring]") {
  HandRing ring(8);
  std::uint64_t posted = 0;
  std::uint64_t consumed = 0;
  // Uneven bursts make the producer and consumer cross the wrap point at different offsets.
  for (int round = 0; round < 200; ++round) {
    int burst = 1 + round % 8;
    for (int i = 0; i < burst && ring.producer.try_post(numbered(posted)); ++i) ++posted;
    int take = 1 + (round * 5) % 8;
    for (int i = 0; i < take && consumed < posted; ++i) {
      Command c = ring.consume();
      REQUIRE(c.local_offset == consumed);
      REQUIRE(c.remote_offset == consumed * 3);
      ++consumed;
    }
  }
  CHECK(posted > 8 * 20);
  CHECK(ring.control.tail == posted);
}

TEST_CASE("credit arithmetic survives the 64-bit counters wrapping", "[unit][ring]") {
  const std::uint64_t start = std::numeric_limits<std::uint64_t>::max() - 5;
  HandRing ring(4, start);
  for (std::uint64_t n = 0; n < 4; ++n) REQUIRE(ring.producer.try_post(numbered(n)));
  CHECK_FALSE(ring.producer.try_post(numbered(4)));
  for (std::uint64_t n = 0; n < 12; ++n) {
    REQUIRE(ring.consume().local_offset == n);
    REQUIRE(ring.producer.try_post(numbered(n + 4)));
    REQUIRE_FALSE(ring.producer.try_post(numbered(n + 5)));
  }
  CHECK(ring.control.tail == start + 16);  // wrapped past zero
  CHECK(ring.control.tail < start);
}
