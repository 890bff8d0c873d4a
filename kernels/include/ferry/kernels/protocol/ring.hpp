// Ring index and credit arithmetic.
//
// Every ring is single-producer single-consumer with two 64-bit counters that only grow: the tail (messages
// published, advanced by the producer in the consumer's memory) and the head (messages consumed, returned by
// the consumer into the producer's memory). Counters never wrap in practice (2^64 messages) and never reset:
// rings carry one operation after another, each taking exactly the number of messages both sides computed, so
// no reset or barrier is needed between operations.
//
// Each operation lays its messages out afresh (RingWindow): the ring's bytes are cut into as many slots of
// this operation's stride as fit, so bf16 rows get about twice the slots fp32 rows get. Slot positions count
// from the operation's first message (`base`), which both ends know: it is the producer's tail and the
// consumer's head when the operation starts. Because positions restart, a producer may not write into an
// operation's window until the consumer has released every message of the operations before it (credit is 0
// while head < base).
#pragma once

#include <cstdint>

#include "ferry/kernels/protocol/hd.hpp"

namespace ferry::kernels::protocol {

FERRY_HD inline std::uint64_t min_u64(std::uint64_t a, std::uint64_t b) {
  return a < b ? a : b;
}
FERRY_HD inline std::uint64_t max_u64(std::uint64_t a, std::uint64_t b) {
  return a > b ? a : b;
}

struct RingWindow {
  std::uint64_t base = 0;   // counter value of this operation's first message on the ring
  std::uint64_t slots = 1;  // >= 1

  // Slot of the message with counter value `counter` (>= base).
  FERRY_HD std::uint64_t position(std::uint64_t counter) const { return (counter - base) % slots; }
  // Slots the producer may fill now, given its tail and the consumer's head as last seen.
  FERRY_HD std::uint64_t credit(std::uint64_t tail, std::uint64_t head) const {
    if (head < base) return 0;  // the previous operation's messages still occupy the bytes
    return slots - (tail - head);
  }
};

// Messages the consumer may read now.
FERRY_HD inline std::uint64_t ready(std::uint64_t tail, std::uint64_t head) {
  return tail > head ? tail - head : 0;
}

// How many consumed messages a consumer lets pile up before it returns them as credit, for a producer that
// waits for `chunk` free slots before it publishes (fabric producers do, to move whole chunks per operation).
// Liveness: a producer stalls only while more than slots - chunk messages are outstanding, so once the
// consumer has caught up it holds at least slots - chunk + 1 unreturned ones and must return them: the batch
// may not exceed that.
FERRY_HD inline std::uint64_t credit_batch(std::uint64_t slots, std::uint64_t chunk) {
  std::uint64_t limit = slots >= chunk ? slots - chunk + 1 : 1;
  return max_u64(1, min_u64(chunk, limit));
}

}  // namespace ferry::kernels::protocol
