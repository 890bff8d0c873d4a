// put_signal: the signal must never be visible before its payload.
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "scenarios.hpp"

namespace fabric_worker {
namespace {

using ferry::transport::MemoryKind;

constexpr int kSlots = 8;
constexpr std::size_t kSlotBytes = std::size_t{1} << 20;  // larger than one tcp segment: multi-fragment puts

// Payload size of round `round` from `src`: log-uniform in [1 B, 1 MiB], one round in 16 a bare signal (0 B).
std::size_t round_bytes(std::uint64_t seed, int src, std::uint64_t round) {
  std::uint64_t x =
      pattern_byte(seed, src, round, 7, 0) | (std::uint64_t(pattern_byte(seed, src, round, 7, 1)) << 8);
  if (x % 16 == 0) return 0;
  double exponent = double(x) / 65536.0 * std::log2(double(kSlotBytes));
  return std::min<std::size_t>(kSlotBytes, static_cast<std::size_t>(std::exp2(exponent)));
}

std::uint64_t load_acquire(const void* word) {
  return std::atomic_ref<std::uint64_t>(*static_cast<std::uint64_t*>(const_cast<void*>(word)))
      .load(std::memory_order_acquire);
}

}  // namespace

void signal_order(const Context& context) {
  const int rank = context.rank();
  const int world = context.world();
  if (world < 2) throw ScenarioFailure("signal_order needs at least 2 ranks");
  const std::uint64_t rounds = context.rounds > 0 ? context.rounds : 2000;
  const int next = (rank + 1) % world;
  const int prev = (rank + world - 1) % world;

  auto fabric = context.make_fabric();
  auto send = fabric->register_region(nullptr, kSlots * kSlotBytes, MemoryKind::host);
  auto receive = fabric->register_region(nullptr, kSlots * kSlotBytes, MemoryKind::host);
  auto words =
      fabric->register_region(nullptr, 64, MemoryKind::host);  // [0] signals from prev, [1] acks from next
  fabric->connect();
  auto* send_bytes = static_cast<std::uint8_t*>(fabric->region_base(send));
  auto* receive_bytes = static_cast<std::uint8_t*>(fabric->region_base(receive));
  auto* word = static_cast<std::uint64_t*>(fabric->region_base(words));

  std::uint64_t sent = 0, received = 0;
  std::uint64_t slot_ticket[kSlots] = {};
  ferry::Deadline deadline(context.peers.timeout);
  ferry::Backoff backoff;
  while (sent < rounds || received < rounds) {
    bool moved = fabric->progress();
    // Sender: a slot is free once the target acknowledged its previous round and our put of it completed.
    std::uint64_t acks = load_acquire(&word[1]);
    if (sent < rounds && sent - acks < kSlots && fabric->completed() >= slot_ticket[sent % kSlots]) {
      int slot = static_cast<int>(sent % kSlots);
      std::size_t bytes = round_bytes(context.seed, rank, sent);
      for (std::size_t i = 0; i < bytes; ++i)
        send_bytes[slot * kSlotBytes + i] = pattern_byte(context.seed, rank, next, sent, i);
      slot_ticket[slot] =
          fabric->put_signal(next, send, slot * kSlotBytes, receive, slot * kSlotBytes, bytes, words, 0, 1);
      ++sent;
      moved = true;
    }
    // Target: check every round the signal announces, right away, then acknowledge it.
    std::uint64_t signalled = load_acquire(&word[0]);
    if (signalled > rounds)
      throw ScenarioFailure("signal word reads " + std::to_string(signalled) + " > rounds");
    while (received < signalled) {
      int slot = static_cast<int>(received % kSlots);
      std::size_t bytes = round_bytes(context.seed, prev, received);
      for (std::size_t i = 0; i < bytes; ++i) {
        std::uint8_t want = pattern_byte(context.seed, prev, rank, received, i);
        std::uint8_t got = receive_bytes[slot * kSlotBytes + i];
        if (got != want) {
          char text[256];
          std::snprintf(
              text, sizeof text,
              "round %llu from rank %d: the signal arrived (word = %llu) but payload byte %zu of %zu is "
              "0x%02x, expected 0x%02x",
              static_cast<unsigned long long>(received), prev, static_cast<unsigned long long>(signalled), i,
              bytes, got, want);
          throw ScenarioFailure(text);
        }
      }
      ++received;
      fabric->atomic_add(prev, words, 8, 1);
      moved = true;
    }
    if (moved) {
      backoff.reset();
    } else {
      if (deadline.expired()) {
        throw ScenarioFailure("stuck after sending " + std::to_string(sent) + " and receiving " +
                              std::to_string(received) + " of " + std::to_string(rounds) + " rounds");
      }
      backoff.pause();
    }
  }
  fabric->flush();
  ferry::transport::fabric_barrier(*fabric, context.peers, "signal_order/done");
  std::printf(
      "rank %d: %llu signalled rounds to rank %d, %llu from rank %d, payload always ahead of its signal\n",
      rank, static_cast<unsigned long long>(sent), next, static_cast<unsigned long long>(received), prev);
}

}  // namespace fabric_worker
