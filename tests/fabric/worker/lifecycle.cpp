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
