// The host executor of the low-latency mode (protocol/low_latency_roles.hpp) for one rank: each half of an
// operation runs its phases in order on the calling thread, so the send half returns as soon as every row and
// word is written or handed to the proxy, and no thread of ferry's waits between the two halves.
//
// Several halves of different operations may run at once on different threads (an operation queued with
// async_finish beside a hook taken by the caller): they share only the fabric writer, which is locked per
// command. Which operation runs when, and on which buffer, is the runtime's business (low_latency.cpp).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

#include "ferry/kernels/host/memory.hpp"
#include "ferry/kernels/protocol/low_latency_roles.hpp"

namespace ferry::kernels::host {

// lanes > 1: the GPU's execution model on the CPU, for tests. Every phase runs as `slices` role instances,
// each by `lanes` threads sharing its state as a group of warps does (lane_group.hpp), so a role whose
// threads would diverge fails here.
struct LowLatencyEngineOptions {
  int lanes = 1;
  int slices = 2;
};

class LowLatencyEngine {
 public:
  // `memory.local` is this rank's low-latency region (`memory.bytes` bytes, zeroed before first use).
  LowLatencyEngine(int rank, const protocol::Topology& topo, RankMemory memory,
                   const LowLatencyEngineOptions& options = {});
  ~LowLatencyEngine();
  LowLatencyEngine(const LowLatencyEngine&) = delete;
  LowLatencyEngine& operator=(const LowLatencyEngine&) = delete;

  // Throw Errc::protocol naming rank, phase and peer when a word or row of another operation arrives,
  // Errc::timeout if a phase stops moving (waits mask silent peers well before), or the proxy's error.
  void dispatch_send(const protocol::LowLatencyDispatchPlan& plan);
  void dispatch_receive(const protocol::LowLatencyDispatchPlan& plan);
  void combine_send(const protocol::LowLatencyCombinePlan& plan);
  void combine_receive(const protocol::LowLatencyCombinePlan& plan);
  // Only the acquire phase's wait: every peer has released the uses of the buffer it took part in (zero-copy
  // staging); the send half that follows records the operation's use.
  void acquire(const protocol::LowLatencyContext& ctx);
  // clean_low_latency_buffer: a barrier, every count and release word of `ctx.layout` zeroed, a barrier.
  void clean(const protocol::LowLatencyContext& ctx, std::uint64_t epoch);

  std::byte* region() const;
  std::size_t bytes() const;
  protocol::Traffic traffic() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::kernels::host
