// Lifecycle scenarios: clean shutdown, and a peer that dies mid-transfer.
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>

#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"
#include "scenarios.hpp"

namespace fabric_worker {
namespace {

using ferry::transport::MemoryKind;
using Seconds = std::chrono::duration<double>;

constexpr std::size_t kBuffer = std::size_t{1} << 20;

}  // namespace

void shutdown(const Context& context) {
  const int rank = context.rank();
  const int world = context.world();
  const int cycles = context.rounds > 0 ? context.rounds : 3;
  for (int cycle = 0; cycle < cycles; ++cycle) {
    auto fabric = context.make_fabric();
    auto send = fabric->register_region(nullptr, kBuffer, MemoryKind::host);
    auto receive = fabric->register_region(nullptr, kBuffer * world, MemoryKind::host);
    fabric->connect();
    for (int i = 0; i < 64; ++i) {
      for (int peer = 0; peer < world; ++peer) {
        if (peer != rank) fabric->put(peer, send, 0, receive, rank * kBuffer, 4096 << (i % 8));
      }
      fabric->progress();
    }
    fabric->flush();
    ferry::transport::fabric_barrier(*fabric, context.peers, "shutdown/flushed");
    auto start = ferry::Clock::now();
    fabric.reset();
    double took = Seconds(ferry::Clock::now() - start).count();
    if (took > 5.0) {
      throw ScenarioFailure("destroying fabric " + std::to_string(cycle) + " took " + std::to_string(took) +
                            " s");
    }
    std::printf("rank %d: fabric %d torn down in %.3f s\n", rank, cycle, took);
  }
}

void kill_peer(const Context& context) {
  const int rank = context.rank();
  const int world = context.world();
  constexpr int kVictim = 1;
  if (world < 2) throw ScenarioFailure("kill_peer needs at least 2 ranks");
  // `ferry launch` stops the other ranks (SIGTERM, then SIGKILL after its grace period) as soon as the victim
  // dies; survivors ignore SIGTERM so that they live long enough to show how the fabric reports the death.
  if (rank != kVictim) signal(SIGTERM, SIG_IGN);

  auto fabric = context.make_fabric();
  auto send = fabric->register_region(nullptr, kBuffer, MemoryKind::host);
  auto receive = fabric->register_region(nullptr, kBuffer * world, MemoryKind::host);
  fabric->connect();

  if (rank == kVictim) {
    for (int i = 0; i < 32; ++i) {
      fabric->put(0, send, 0, receive, rank * kBuffer, kBuffer);
      fabric->progress();
    }
    // The victim dies with the survivors' puts to it in flight, but only after its own puts have landed. Over
    // tcp, UCX 1.13 emulates RMA with active messages that the target acknowledges; a survivor that handles a
    // put fragment after it has marked the sender's endpoint failed aborts inside UCX (ucp_put_handler:
    // "Fatal: unexpected error"), a limitation of UCX's software RMA that hardware RDMA does not have
    // (docs/ARCHITECTURE.md, "Failure handling").
    fabric->flush();
    std::printf("rank %d: dying now, mid-transfer\n", rank);
    std::fflush(stdout);
    raise(SIGKILL);
  }
  auto start = ferry::Clock::now();
  try {
    // Keep data flowing towards the victim until the fabric notices it is gone.
    ferry::Deadline deadline(context.peers.timeout + std::chrono::seconds(5));
    while (!deadline.expired()) {
      fabric->put(kVictim, send, 0, receive, rank * kBuffer, kBuffer);
      fabric->progress();
    }
  } catch (const ferry::Error& e) {
    double took = Seconds(ferry::Clock::now() - start).count();
    std::printf("rank %d: fabric error after %.1f s: %s\n", rank, took, e.what());
    std::fflush(stdout);
    throw;  // main reports it and exits non-zero, after the broken fabric's (bounded) teardown
  }
  throw ScenarioFailure("no error although rank 1 died");
}

}  // namespace fabric_worker

namespace fabric_worker {
namespace {

// The first byte of `value`'s pattern in rank `from`'s slot: what the survivors put to each other.
std::uint8_t isolation_byte(std::uint64_t seed, int from, std::size_t position) {
  return pattern_byte(seed, static_cast<std::uint64_t>(from), 7, 0, position);
}

// Waits (progressing the fabric) until `word` reaches `expected`, or throws naming `what`.
void await_word(ferry::transport::Fabric& fabric, const volatile std::uint64_t* word, std::uint64_t expected,
                ferry::Duration limit, const std::string& what) {
  ferry::Deadline deadline(limit);
  while (__atomic_load_n(word, __ATOMIC_ACQUIRE) < expected) {
    fabric.progress();
    if (deadline.expired()) throw ScenarioFailure("timed out waiting for " + what);
  }
}

// Counts this rank in at `key` and waits (progressing the fabric) until `count` ranks are in, or throws
// `why`. A store counter, not a barrier: after a death the store's barriers fail, its counters do not.
void meet_through_store(const Context& context, ferry::transport::Fabric& fabric, const std::string& key,
                        std::int64_t count, const std::string& why) {
  context.peers.store->add(key, 1);
  ferry::Deadline deadline(context.peers.timeout);
  while (context.peers.store->add(key, 0) < count) {
    fabric.progress();
    if (deadline.expired()) throw ScenarioFailure(why);
  }
}

}  // namespace

void isolate_peer(const Context& context) {
  const int rank = context.rank();
  const int world = context.world();
  constexpr int kVictim = 1;
  constexpr std::size_t kPiece = 64 << 10;
  if (world < 3) throw ScenarioFailure("isolate_peer needs at least 3 ranks (two survivors)");
  if (rank != kVictim) signal(SIGTERM, SIG_IGN);  // outlive the launcher's stop of the job

  ferry::transport::FabricOptions options = context.options;
  options.isolate_peer_failures = true;
  auto fabric = ferry::transport::make_fabric(context.peers, options);
  auto send = fabric->register_region(nullptr, kPiece, MemoryKind::host);
  // kPiece bytes from every rank, then one signal word per rank.
  auto receive = fabric->register_region(nullptr, kPiece * world + 8 * world, MemoryKind::host);
  fabric->connect();
  auto* out = static_cast<std::uint8_t*>(fabric->region_base(send));
  for (std::size_t i = 0; i < kPiece; ++i) out[i] = isolation_byte(context.seed, rank, i);
  // The victim dies only once every rank is connected: a rank still inside connect() when it goes would
  // rightly fail there (connect's barrier hears of the job's failure from the store), which is not the
  // isolation this scenario tests.
  meet_through_store(context, *fabric, "fabric_worker/isolate_peer/connected", world,
                     "not every rank connected");

  if (rank == kVictim) {
    std::printf("rank %d: dying now\n", rank);
    std::fflush(stdout);
    raise(SIGKILL);
  }
  // Keep putting to the victim until the fabric gives it up (its endpoint fails, or the liveness check
  // finds its process gone): no throw, the other peers stay usable.
  const auto start = ferry::Clock::now();
  ferry::Deadline deadline(context.peers.timeout + std::chrono::seconds(5));
  while (fabric->failed_peer_count() == 0) {
    fabric->put(kVictim, send, 0, receive, rank * kPiece, kPiece);
    fabric->progress();
    if (deadline.expired()) throw ScenarioFailure("the fabric never gave up rank 1, which died");
  }
  const double noticed = Seconds(ferry::Clock::now() - start).count();
  const auto failed = fabric->failed_peers();
  if (failed.size() != 1 || failed[0].rank != kVictim || failed[0].reason.find("rank 1") == std::string::npos)
    throw ScenarioFailure("failed_peers() does not name rank 1 alone: " +
                          (failed.empty() ? std::string("empty") : failed[0].reason));

  // Operations to the dead peer complete at once, without sending.
  const std::uint64_t ticket = fabric->put_signal(kVictim, send, 0, receive, rank * kPiece, kPiece, receive,
                                                  kPiece * world + 8 * rank, 1);
  if (fabric->completed() < ticket)
    throw ScenarioFailure("a put_signal to the failed rank 1 did not complete at once");
  bool refused = false;
  try {
    fabric->fetch_add(kVictim, receive, kPiece * world, 1);
  } catch (const ferry::Error& error) {
    refused = error.code() == ferry::Errc::peer_failure;
  }
  if (!refused) throw ScenarioFailure("fetch_add to the failed rank 1 was not refused as a peer failure");

  // The survivors still reach each other: a piece and its signal to every other survivor, every byte checked.
  for (int peer = 0; peer < world; ++peer) {
    if (peer == rank || peer == kVictim) continue;
    fabric->put_signal(peer, send, 0, receive, rank * kPiece, kPiece, receive, kPiece * world + 8 * rank, 1);
  }
  const auto flush_start = ferry::Clock::now();
  fabric->flush();  // waits for the survivors only
  const double flushed = Seconds(ferry::Clock::now() - flush_start).count();
  auto* in = static_cast<std::uint8_t*>(fabric->region_base(receive));
  for (int peer = 0; peer < world; ++peer) {
    if (peer == rank || peer == kVictim) continue;
    await_word(*fabric, reinterpret_cast<std::uint64_t*>(in + kPiece * world + 8 * peer), 1,
               context.peers.timeout, "rank " + std::to_string(peer) + "'s signal");
    for (std::size_t i = 0; i < kPiece; ++i) {
      if (in[peer * kPiece + i] != isolation_byte(context.seed, peer, i))
        throw ScenarioFailure("byte " + std::to_string(i) + " from rank " + std::to_string(peer) +
                              " is wrong");
    }
  }
  if (fabric->failed_peer_count() != 1) throw ScenarioFailure("a survivor was given up too");
  // Nobody tears down while a survivor may still wait for its signal.
  meet_through_store(context, *fabric, "fabric_worker/isolate_peer/done", world - 1,
                     "the other survivors never finished");
  // The owner gives up a live peer (after the last exchange): it is failed as a dead one would be.
  if (rank == 0) {
    fabric->fail_peer(2, "given up by the test");
    const std::uint64_t last = fabric->put(2, send, 0, receive, rank * kPiece, kPiece);
    const auto now = fabric->failed_peers();
    if (fabric->completed() < last || now.size() != 2 || now[1].rank != 2 ||
        now[1].reason != "given up by the test")
      throw ScenarioFailure("fail_peer(2) did not isolate rank 2 as a failed peer");
  }
  std::printf("rank %d: gave up rank 1 after %.2f s, flush of the survivors took %.3f s\n", rank, noticed,
              flushed);
}

}  // namespace fabric_worker
