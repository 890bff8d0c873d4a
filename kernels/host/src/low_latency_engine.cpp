#include "ferry/kernels/host/low_latency_engine.hpp"

#include <cstring>
#include <mutex>
#include <string>
#include <vector>

#include "describe.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/protocol/role_loop.hpp"
#include "group_runner.hpp"
#include "low_latency_io.hpp"

namespace ferry::kernels::host {

namespace p = protocol;

// The fabric writer of the rank, shared by the halves that may run at once on different threads.
class LockedWriter final : public RemoteWriter {
 public:
  explicit LockedWriter(std::unique_ptr<RemoteWriter> writer) : writer_(std::move(writer)) {}
  void put(int rank, std::size_t src_offset, std::size_t dst_offset, std::size_t bytes) override {
    std::lock_guard lock(mutex_);
    writer_->put(rank, src_offset, dst_offset, bytes);
  }
  void signal(int rank, std::size_t word_offset, std::uint64_t add) override {
    std::lock_guard lock(mutex_);
    writer_->signal(rank, word_offset, add);
  }
  bool flush() override {
    std::lock_guard lock(mutex_);
    return writer_->flush();
  }
  std::size_t held() const override {
    std::lock_guard lock(mutex_);
    return writer_->held();
  }

 private:
  mutable std::mutex mutex_;
  std::unique_ptr<RemoteWriter> writer_;
};

struct LowLatencyEngine::Impl {
  int rank;
  p::Topology topo;
  RankMemory memory;
  LowLatencyEngineOptions options;
  std::unique_ptr<LockedWriter> writer;
  mutable std::mutex traffic_mutex;
  p::Traffic traffic;
  LowLatencyHostIo io(p::Traffic* tally) const {
    return LowLatencyHostIo(memory.local, memory.node, writer.get(), tally);
  }

  // Drives one role to its end on this thread. A waiting role masks a silent peer after mask_after_ns, so
  // a role that stops moving for twice that (and a second) is stuck for another reason.
  template <class Role>
  void drive(Role role, LowLatencyHostIo& io, const p::LowLatencyContext& ctx) {
    const std::uint64_t stuck_after = p::low_latency_stuck_after_ns(ctx.mask_after_ns);
    const p::RoleOutcome outcome = p::drive_role(role, io, stuck_after);
    const std::string where = "rank " + std::to_string(rank) + " " + stage_name(outcome.last.stage) +
                              " (low-latency operation " + std::to_string(ctx.operation) + ")";
    switch (outcome.end) {
      case p::RoleEnd::done:
      case p::RoleEnd::aborted:
        return;
      case p::RoleEnd::fault:
        fail(Errc::protocol, where + " received " + describe_low_latency_fault(outcome.last.fault));
      case p::RoleEnd::timeout:
        fail(Errc::timeout, where + ": no progress for " +
                                seconds_text(std::chrono::nanoseconds(stuck_after)) + "; waits for rank " +
                                std::to_string(outcome.last.wait.peer_rank) + " (word " +
                                std::to_string(outcome.last.wait.head) + ", wants " +
                                std::to_string(outcome.last.wait.tail) + ")");
    }
  }

  // Everything this half handed to the fabric writer is with the proxy before the half returns, so no later
  // step of this rank is needed for a peer to receive it.
  void hand_over(const p::LowLatencyContext& ctx) {
    if (!writer) return;
    const Deadline deadline(std::chrono::nanoseconds(p::low_latency_stuck_after_ns(ctx.mask_after_ns)));
    Backoff backoff;
    while (!writer->flush()) {
      if (deadline.expired()) {
        fail(Errc::timeout, "rank " + std::to_string(rank) + ": " + std::to_string(writer->held()) +
                                " fabric commands of low-latency operation " + std::to_string(ctx.operation) +
                                " not taken by the proxy");
      }
      backoff.pause();
    }
  }

  // Lanes mode: the jobs by groups of threads, as warp groups run them (group_runner.hpp).
  void run_lanes(const std::vector<GroupJob>& jobs, p::Traffic& tally) {
    GroupRun run;
    run.rank = rank;
    run.lanes = options.lanes;
    run.local = memory.local;
    run.node = memory.node;
    run.writers.assign(jobs.size(), writer.get());
    run_groups(jobs, run, tally);
  }

  // One phase: Role built from (io, arg, slice), on this thread or as slices of lane groups.
  template <template <class> class Role, class Arg>
  void phase(const Arg& arg, const p::LowLatencyContext& ctx, LowLatencyHostIo& io, p::Traffic& tally) {
    if (options.lanes <= 1) {
      drive(Role<LowLatencyHostIo>(io, arg, p::RoleSlice{}), io, ctx);
      return;
    }
    const std::uint64_t stuck_after = p::low_latency_stuck_after_ns(ctx.mask_after_ns);
    std::vector<GroupJob> jobs;
    for (int s = 0; s < options.slices; ++s) {
      jobs.push_back({-1, [&arg, s, slices = options.slices, stuck_after](LaneIo& lane) {
                        Role<LaneIo> role(lane, arg, p::RoleSlice{s, slices});
                        return p::drive_role(role, lane, stuck_after);
                      }});
    }
    run_lanes(jobs, tally);
  }

  template <class Body>
  void run_half(const p::LowLatencyContext& ctx, Body body) {
    p::Traffic tally;
    LowLatencyHostIo host_io = io(&tally);
    body(host_io, tally);
    hand_over(ctx);
    std::lock_guard lock(traffic_mutex);
    traffic.add(tally);
  }
};

LowLatencyEngine::LowLatencyEngine(int rank, const p::Topology& topo, RankMemory memory,
                                   const LowLatencyEngineOptions& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& impl = *impl_;
  impl.rank = rank;
  impl.topo = topo;
  impl.memory = memory;
  impl.options = options;
  if (options.lanes > 1 && options.slices < 1)
    fail(Errc::invalid_argument, "low-latency lanes mode needs slices >= 1");
  if (topo.num_nodes > 1) {
    if (memory.remote == nullptr) {
      fail(Errc::invalid_argument, "rank " + std::to_string(rank) + " has peers on " +
                                       std::to_string(topo.num_nodes - 1) +
                                       " other nodes but no remote memory");
    }
    impl.writer = std::make_unique<LockedWriter>(memory.remote->open_writer());
  }
}

LowLatencyEngine::~LowLatencyEngine() = default;

std::byte* LowLatencyEngine::region() const {
  return impl_->memory.local;
}
std::size_t LowLatencyEngine::bytes() const {
  return impl_->memory.bytes;
}
p::Traffic LowLatencyEngine::traffic() const {
  std::lock_guard lock(impl_->traffic_mutex);
  return impl_->traffic;
}

void LowLatencyEngine::dispatch_send(const p::LowLatencyDispatchPlan& plan) {
  Impl& impl = *impl_;
  impl.run_half(plan.ctx, [&](LowLatencyHostIo& io, p::Traffic& tally) {
    impl.phase<p::LowLatencyAcquire>(plan.ctx, plan.ctx, io, tally);
    impl.phase<p::LowLatencyDispatchScatter>(plan, plan.ctx, io, tally);
    impl.phase<p::LowLatencyDispatchPublish>(plan, plan.ctx, io, tally);
  });
}

void LowLatencyEngine::dispatch_receive(const p::LowLatencyDispatchPlan& plan) {
  Impl& impl = *impl_;
  impl.run_half(plan.ctx, [&](LowLatencyHostIo& io, p::Traffic& tally) {
    impl.phase<p::LowLatencyDispatchGather>(plan, plan.ctx, io, tally);
    impl.phase<p::LowLatencyRelease>(plan.ctx, plan.ctx, io, tally);
  });
}

void LowLatencyEngine::combine_send(const p::LowLatencyCombinePlan& plan) {
  Impl& impl = *impl_;
  impl.run_half(plan.ctx, [&](LowLatencyHostIo& io, p::Traffic& tally) {
    impl.phase<p::LowLatencyAcquire>(plan.ctx, plan.ctx, io, tally);
    impl.phase<p::LowLatencyCombineReturn>(plan, plan.ctx, io, tally);
    impl.phase<p::LowLatencyCombinePublish>(plan, plan.ctx, io, tally);
  });
}

void LowLatencyEngine::combine_receive(const p::LowLatencyCombinePlan& plan) {
  Impl& impl = *impl_;
  impl.run_half(plan.ctx, [&](LowLatencyHostIo& io, p::Traffic& tally) {
    impl.phase<p::LowLatencyCombineWait>(plan, plan.ctx, io, tally);
    impl.phase<p::LowLatencyCombineReduce>(plan, plan.ctx, io, tally);
    impl.phase<p::LowLatencyRelease>(plan.ctx, plan.ctx, io, tally);
  });
}

void LowLatencyEngine::acquire(const p::LowLatencyContext& ctx) {
  Impl& impl = *impl_;
  impl.run_half(ctx, [&](LowLatencyHostIo& io, p::Traffic& tally) {
    impl.phase<p::LowLatencyAcquireWait>(ctx, ctx, io, tally);
  });
}

void LowLatencyEngine::clean(const p::LowLatencyContext& ctx, std::uint64_t epoch) {
  Impl& impl = *impl_;
  if (ctx.layout.total_bytes > impl.memory.bytes) {
    fail(Errc::invalid_argument, "rank " + std::to_string(impl.rank) + ": the low-latency region has " +
                                     std::to_string(impl.memory.bytes) + " bytes but the shape needs " +
                                     std::to_string(ctx.layout.total_bytes));
  }
  // Nobody writes an arrival or release word between the two barriers (every rank has finished its
  // operations): this rank's private copies catch up with them.
  impl.run_half(ctx, [&](LowLatencyHostIo& io, p::Traffic&) {
    impl.drive(p::LowLatencyBarrier<LowLatencyHostIo>(io, ctx, 2 * epoch + 1), io, ctx);
    p::sync_private_words(io, ctx.layout);
    impl.drive(p::LowLatencyBarrier<LowLatencyHostIo>(io, ctx, 2 * epoch + 2), io, ctx);
  });
}

}  // namespace ferry::kernels::host
