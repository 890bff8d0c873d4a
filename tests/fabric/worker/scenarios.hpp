// The fabric worker: one rank of a multi-process fabric test, started by `ferry launch`. Each scenario
// returns normally when every check passed and throws (ferry::Error or ScenarioFailure) naming what went
// wrong.
#pragma once

#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>

#include "ferry/group.hpp"
#include "ferry/transport/fabric.hpp"

namespace fabric_worker {

struct ScenarioFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct Context {
  ferry::Group* group = nullptr;
  ferry::transport::Peers peers;
  ferry::transport::FabricOptions options;
  std::uint64_t seed = 0;
  int rounds = 0;  // 0: the scenario's default

  std::unique_ptr<ferry::transport::Fabric> make_fabric() const {
    return ferry::transport::make_fabric(peers, options);
  }
  int rank() const { return peers.rank; }
  int world() const { return peers.world_size; }
};

// Every rank puts random-sized pieces (1 B .. 1 MiB) at random offsets into every other rank; every byte of
// the receiving region is checked (payload where a piece landed, zero in the gaps).
void random_puts(const Context& context);
// Rank r streams put_signal rounds to rank r+1 through a ring of slots; the target checks the payload the
// moment it sees the signal (acquire load) and acknowledges with an atomic add.
void signal_order(const Context& context);
// All ranks atomic_add and fetch_add one pair of counters on rank 0: the sum is exact, the fetched values are
// distinct and cover 0 .. N-1.
void atomics(const Context& context);
// Three fabrics in a row, each connected, used, flushed, barriered and destroyed within a bound.
void shutdown(const Context& context);
// Rank 1 dies (SIGKILL) after some puts; every other rank keeps putting to it and must get a ferry::Error
// naming rank 1 within the timeout.
void kill_peer(const Context& context);
// With FabricOptions::isolate_peer_failures, rank 1 dies (SIGKILL) after connect: the others keep putting to
// it until the fabric gives it up (failed_peers() names it, nothing throws), then check that operations to it
// complete at once (fetch_add is refused as a peer failure), that flush() waits for the survivors only, that
// a put_signal between survivors lands byte for byte, and that fail_peer gives up a live peer the same way.
void isolate_peer(const Context& context);

// A deterministic byte for position `position` of the stream (seed, a, b, c): what the sender writes and the
// target expects.
inline std::uint8_t pattern_byte(std::uint64_t seed, std::uint64_t a, std::uint64_t b, std::uint64_t c,
                                 std::uint64_t position) {
  std::uint64_t x = seed ^ (a * 0x9e3779b97f4a7c15ULL) ^ (b * 0xc2b2ae3d27d4eb4fULL) ^
                    (c * 0x165667b19e3779f9ULL) ^ ((position >> 3) * 0xd6e8feb86659fd93ULL);
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return static_cast<std::uint8_t>(x >> ((position & 7) * 8));
}

}  // namespace fabric_worker
