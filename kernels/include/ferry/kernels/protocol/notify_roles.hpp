// The notify step before a dispatch: every rank tells every rank (itself included) how many tokens of each of
// its channels it will receive, and how many touch its node (what a rail partner relays). The receivers turn
// these counts into the prefix sums that place every token (plan.hpp), so the only host wait of a dispatch is
// here. Notify rides its own small rings with the same credit rules as the data path, so consecutive
// operations need no barrier. Every notify message carries the operation's parameters and the fingerprint of
// the settings all ranks must share, so ranks that disagree fail here, by name, before any token moves.
#pragma once

#include <cstdint>
#include <cstring>

#include "ferry/kernels/protocol/checks.hpp"
#include "ferry/kernels/protocol/endpoints.hpp"
#include "ferry/kernels/protocol/hd.hpp"
#include "ferry/kernels/protocol/message.hpp"
#include "ferry/kernels/protocol/plan.hpp"
#include "ferry/kernels/protocol/step.hpp"

namespace ferry::kernels::protocol {

struct NotifyPlan {
  OpContext ctx;
  int num_topk = 0;
  const std::int64_t* send_to_rank = nullptr;  // [R * C] this rank's tokens of channel c that rank r receives
  const std::int64_t* send_to_node = nullptr;  // [N * C] this rank's tokens of channel c that touch node n
  std::int64_t* recv_count = nullptr;          // [R * C] out: tokens this rank receives from (s, c)
  std::int64_t* fwd_count = nullptr;  // [N * C] out: tokens this rank relays from its partner on node n
};

FERRY_HD inline RingRef notify_ring(const OpContext& ctx, int peer) {
  return RingRef{&ctx.family(RingKind::notify), 0, peer, peer, ctx.rank};
}

template <class Io>
class NotifySender {
 public:
  // states: [R] ring states; sent: [R] flags (shared by the role's threads, written through commit).
  FERRY_HD NotifySender(Io& io, const NotifyPlan& plan, RingState* states, std::uint8_t* sent)
      : plan_(&plan), states_(states), sent_(sent) {
    for (int r = 0; r < plan.ctx.topo.num_ranks(); ++r) {
      RingState state;
      Producer<Io>::begin(io, notify_ring(plan.ctx, r), state);
      io.commit(states_ + r, state);
      io.commit(sent_ + r, std::uint8_t{0});
    }
  }

  FERRY_HD StepResult step(Io& io) {
    const OpContext& ctx = plan_->ctx;
    const Topology& topo = ctx.topo;
    const NotifyFormat& format = ctx.layout->notify_format;
    StepResult result;
    result.stage = Stage::notify_send;
    bool done = true;
    const int ranks = topo.num_ranks();
    for (int i = 0; i < ranks; ++i) {
      const int target = rotated(i, ranks, ctx.rank);  // not every rank to rank 0 first
      if (sent_[target]) continue;
      RingState state = states_[target];
      Producer<Io> out(io, topo, ctx.rank, notify_ring(ctx, target), format.stride, format.used, state);
      if (out.credit(io) == 0) {
        done = false;
        if (result.wait.kind == WaitKind::none) result.wait = out.credit_wait(io, 0, 1);
        continue;
      }
      std::byte* slot = out.slot(0);
      NotifyHeader header{};
      header.operation = ctx.operation;
      header.source_rank = ctx.rank;
      header.hidden = static_cast<std::int32_t>(ctx.hidden);
      header.num_topk = plan_->num_topk;
      header.num_experts = ctx.split.num_experts;
      header.payload_kind = static_cast<std::uint8_t>(ctx.kind);
      header.num_channels = topo.num_channels;
      header.fingerprint = ctx.fingerprint;
      io.store(reinterpret_cast<NotifyHeader*>(slot), header);  // from this thread: never copy()
      const int channels = topo.num_channels;
      io.copy(slot + format.to_rank, plan_->send_to_rank + target * channels,
              sizeof(std::int64_t) * channels);
      io.copy(slot + format.to_node, plan_->send_to_node + topo.node_of(target) * channels,
              sizeof(std::int64_t) * channels);
      out.publish(io, 1);
      io.commit(states_ + target, state);
      io.commit(sent_ + target, std::uint8_t{1});
      result.progressed = true;
    }
    result.done = done;
    return result;
  }

 private:
  const NotifyPlan* plan_;
  RingState* states_;
  std::uint8_t* sent_;
};

template <class Io>
class NotifyReceiver {
 public:
  // states: [R] ring states; received: [R] flags (shared by the role's threads, written through commit).
  FERRY_HD NotifyReceiver(Io& io, const NotifyPlan& plan, RingState* states, std::uint8_t* received)
      : plan_(&plan), states_(states), received_(received) {
    for (int r = 0; r < plan.ctx.topo.num_ranks(); ++r) {
      RingState state;
      Consumer<Io>::begin(io, notify_ring(plan.ctx, r), state);
      io.commit(states_ + r, state);
      io.commit(received_ + r, std::uint8_t{0});
    }
  }

  FERRY_HD StepResult step(Io& io) {
    const OpContext& ctx = plan_->ctx;
    const Topology& topo = ctx.topo;
    const NotifyFormat& format = ctx.layout->notify_format;
    const int channels = topo.num_channels;
    StepResult result;
    result.stage = Stage::notify_receive;
    bool done = true;
    for (int source = 0; source < topo.num_ranks() && !result.fault.any(); ++source) {
      if (received_[source]) continue;
      RingState state = states_[source];
      Consumer<Io> in(io, topo, ctx.rank, notify_ring(ctx, source), format.stride, state);
      if (in.ready(io) == 0) {
        done = false;
        if (result.wait.kind == WaitKind::none) result.wait = in.data_wait(io, 0, 1);
        continue;
      }
      const std::byte* slot = in.slot(0);
      const NotifyHeader header = read_slot_header<NotifyHeader>(slot);
      result.fault = check(header, source);
      if (result.fault.any()) break;
      io.copy(plan_->recv_count + source * channels, slot + format.to_rank, sizeof(std::int64_t) * channels);
      if (topo.local_of(source) == ctx.local() && topo.node_of(source) != ctx.node()) {
        io.copy(plan_->fwd_count + topo.node_of(source) * channels, slot + format.to_node,
                sizeof(std::int64_t) * channels);
      }
      in.consume(1);
      in.release(io, 1, true);
      io.commit(states_ + source, state);
      io.commit(received_ + source, std::uint8_t{1});
      result.progressed = true;
    }
    result.done = done && !result.fault.any();
    return result;
  }

 private:
  FERRY_HD Fault check(const NotifyHeader& header, int source) const {
    const OpContext& ctx = plan_->ctx;
    const RingKind ring = RingKind::notify;
    if (header.operation != ctx.operation) {
      return make_fault(FaultKind::wrong_operation, ring, source, header.operation, ctx.operation);
    }
    if (header.source_rank != source) {
      return make_fault(FaultKind::wrong_source, ring, source, header.source_rank, source);
    }
    if (header.hidden != ctx.hidden)
      return make_fault(FaultKind::wrong_hidden, ring, source, header.hidden, ctx.hidden);
    if (header.payload_kind != static_cast<std::uint8_t>(ctx.kind)) {
      return make_fault(FaultKind::wrong_payload, ring, source, header.payload_kind,
                        static_cast<int>(ctx.kind));
    }
    if (header.num_topk != plan_->num_topk) {
      return make_fault(FaultKind::wrong_topk, ring, source, header.num_topk, plan_->num_topk);
    }
    if (header.num_experts != ctx.split.num_experts) {
      return make_fault(FaultKind::wrong_experts, ring, source, header.num_experts, ctx.split.num_experts);
    }
    if (header.num_channels != ctx.topo.num_channels) {
      return make_fault(FaultKind::wrong_channels, ring, source, header.num_channels, ctx.topo.num_channels);
    }
    if (header.fingerprint != ctx.fingerprint) {
      return make_fault(FaultKind::wrong_settings, ring, source,
                        static_cast<std::int64_t>(header.fingerprint),
                        static_cast<std::int64_t>(ctx.fingerprint));
    }
    return {};
  }

  const NotifyPlan* plan_;
  RingState* states_;
  std::uint8_t* received_;
};

}  // namespace ferry::kernels::protocol
