// Ring index and credit arithmetic.
//
// Every ring is single-producer single-consumer with a power-of-two number of slots and two 64-bit counters
// that only grow: the tail (messages published, advanced by the producer in the consumer's memory) and the head
// (messages consumed, returned by the consumer into the producer's memory). Counters never wrap in practice
// (2^64 messages) and never reset: rings carry one operation after another, each taking exactly the number of
// messages both sides computed, so no reset or barrier is needed between operations.
#pragma once

#include <cstdint>

#include "ferry/kernels/protocol/hd.hpp"

namespace ferry::kernels::protocol {

FERRY_HD inline std::uint64_t slot_of(std::uint64_t counter, std::uint64_t slots) { return counter & (slots - 1); }

// Slots the producer may fill now, given its own tail and the last head the consumer returned.
FERRY_HD inline std::uint64_t credit(std::uint64_t tail, std::uint64_t head, std::uint64_t slots) {
  return slots - (tail - head);
}

// Messages the consumer may read now.
FERRY_HD inline std::uint64_t ready(std::uint64_t tail, std::uint64_t head) { return tail - head; }

FERRY_HD inline std::uint64_t min_u64(std::uint64_t a, std::uint64_t b) { return a < b ? a : b; }

}  // namespace ferry::kernels::protocol
