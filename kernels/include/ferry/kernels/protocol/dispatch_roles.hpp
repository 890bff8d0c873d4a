// The three roles of a dispatch, per channel, each a non-blocking step: move what can move now, report.
//
//   DispatchSender     source rank (n, l): each token of the channel once to every node it touches, into the
//                      dispatch_rdma ring of the rail partner (n', l) there (own node: its own ring, no fabric).
//   DispatchForwarder  rank (n, l): drains its dispatch_rdma rings (one per source node) and copies each message
//                      once into the dispatch_nvl ring of every local rank in the message's bitmask.
//   DispatchReceiver   rank (n, l): drains its dispatch_nvl rings (one per forwarder) into the output rows; the
//                      row of the k-th token from source s in channel c is recv_offset[s][c] + k, so the output
//                      is ordered by (source rank, source token) however the messages interleave.
//
// Deadlock freedom: receivers depend on nothing, forwarders only on receivers' credit, senders only on
// forwarders' credit; a step never waits, it returns.
#pragma once

#include <cstdint>
#include <cstring>

#include "ferry/kernels/protocol/checks.hpp"
#include "ferry/kernels/protocol/endpoints.hpp"
#include "ferry/kernels/protocol/hd.hpp"
#include "ferry/kernels/protocol/plan.hpp"
#include "ferry/kernels/protocol/ring.hpp"
#include "ferry/kernels/protocol/routing.hpp"
#include "ferry/kernels/protocol/step.hpp"

namespace ferry::kernels::protocol {

template <class At, class Io>
class DispatchSender {
 public:
  // cursors: [N] scratch, the next token of the channel to consider for each node.
  FERRY_HD DispatchSender(const DispatchPlan& plan, int channel, std::int64_t* cursors)
      : plan_(&plan), channel_(channel), cursors_(cursors) {
    range_ = channel_tokens(plan.num_tokens, plan.ctx.topo.num_channels, channel);
    for (int n = 0; n < plan.ctx.topo.num_nodes; ++n) cursors_[n] = range_.begin;
  }

  FERRY_HD StepResult step(Io& io) {
    const OpContext& ctx = plan_->ctx;
    const RingFamily& family = ctx.layout->dispatch_rdma;
    const std::size_t used = ctx.layout->dispatch_slot.used_bytes(ctx.kind, ctx.hidden);
    StepResult result;
    result.stage = Stage::dispatch_send;
    bool done = true;
    for (int node = 0; node < ctx.topo.num_nodes; ++node) {
      std::int64_t& cursor = cursors_[node];
      skip_untargeted(cursor, node);
      if (cursor >= range_.end) continue;
      Producer<At, Io> out(io, ctx.topo, family, channel_, ctx.rank, ctx.topo.rail_partner(ctx.rank, node), node,
                           ctx.node());
      std::uint64_t budget = min_u64(out.credit(), static_cast<std::uint64_t>(ctx.rdma_chunk));
      std::uint64_t tail = out.tail();
      std::uint64_t written = 0;
      while (written < budget && cursor < range_.end) {
        write_message(out.slot(tail + written), cursor, node);
        ++written;
        ++cursor;
        skip_untargeted(cursor, node);
      }
      if (written > 0) {
        out.publish(io, written, used);
        result.progressed = true;
      }
      if (cursor < range_.end) {
        done = false;
        if (written == 0 && result.wait.kind == WaitKind::none) {
          result.wait = out.credit_wait(cursor - range_.begin, range_.size());
        }
      }
    }
    result.done = done;
    return result;
  }

 private:
  FERRY_HD const std::int64_t* row(std::int64_t token) const { return plan_->topk_idx + token * plan_->num_topk; }

  FERRY_HD void skip_untargeted(std::int64_t& cursor, int node) const {
    const OpContext& ctx = plan_->ctx;
    while (cursor < range_.end && local_mask_on_node(row(cursor), plan_->num_topk, node, ctx.split, ctx.topo) == 0) {
      ++cursor;
    }
  }

  FERRY_HD void write_message(std::byte* slot, std::int64_t token, int node) const {
    const DispatchPlan& plan = *plan_;
    const OpContext& ctx = plan.ctx;
    const DispatchSlotFormat& format = ctx.layout->dispatch_slot;
    const std::int64_t* experts = row(token);
    std::uint32_t mask = local_mask_on_node(experts, plan.num_topk, node, ctx.split, ctx.topo);
    int num_topk = plan.with_topk ? plan.num_topk : 0;
    MessageHeader header = make_header(ctx, ctx.rank, token, mask, num_topk);
    std::memcpy(slot, &header, sizeof(header));
    for (int k = 0; k < num_topk; ++k) {
      std::int64_t expert = experts[k];
      bool here = expert >= 0 && ctx.topo.node_of(ctx.split.rank_of(expert)) == node;
      std::int32_t id = here ? static_cast<std::int32_t>(expert) : -1;
      float weight = here ? plan.topk_weights[token * plan.num_topk + k] : 0.0f;
      std::memcpy(slot + format.topk_ids + sizeof(id) * k, &id, sizeof(id));
      std::memcpy(slot + format.topk_weights + sizeof(weight) * k, &weight, sizeof(weight));
    }
    if (ctx.kind == PayloadKind::fp8_e4m3) {
      std::int64_t blocks = scale_blocks(ctx.hidden);
      std::memcpy(slot + format.scales, plan.x_scales + token * blocks, sizeof(float) * blocks);
    }
    std::memcpy(slot + format.payload, plan.x + token * ctx.row_bytes(), ctx.row_bytes());
  }

  const DispatchPlan* plan_;
  int channel_;
  TokenRange range_;
  std::int64_t* cursors_;
};

template <class At, class Io>
class DispatchForwarder {
 public:
  // consumed: [N] messages taken from each source node's ring; pending: [L] messages written but not yet
  // published into each local rank's ring.
  FERRY_HD DispatchForwarder(const DispatchPlan& plan, int channel, std::int64_t* consumed, std::uint64_t* pending)
      : plan_(&plan), channel_(channel), consumed_(consumed), pending_(pending) {
    for (int n = 0; n < plan.ctx.topo.num_nodes; ++n) consumed_[n] = 0;
    for (int l = 0; l < plan.ctx.topo.local_size; ++l) pending_[l] = 0;
  }

  FERRY_HD StepResult step(Io& io) {
    const OpContext& ctx = plan_->ctx;
    const Topology& topo = ctx.topo;
    const RingFamily& family = ctx.layout->dispatch_rdma;
    const std::size_t used = ctx.layout->dispatch_slot.used_bytes(ctx.kind, ctx.hidden);
    const int channels = topo.num_channels;
    StepResult result;
    result.stage = Stage::dispatch_forward;
    for (int node = 0; node < topo.num_nodes && !result.fault.any(); ++node) {
      std::int64_t expected = plan_->counts.fwd_count[node * channels + channel_];
      std::int64_t& got = consumed_[node];
      if (got >= expected) continue;
      int source = topo.rank_of(node, ctx.local());
      Consumer<At, Io> in(io, topo, family, channel_, ctx.rank, source, node, ctx.node());
      std::uint64_t available = min_u64(in.ready(), static_cast<std::uint64_t>(expected - got));
      available = min_u64(available, static_cast<std::uint64_t>(ctx.rdma_chunk));
      std::uint64_t head = in.head();
      std::uint64_t taken = 0;
      std::int64_t record = plan_->counts.fwd_offset[node * channels + channel_] + got;
      while (taken < available) {
        const std::byte* slot = in.slot(head + taken);
        MessageHeader header = read_header(slot);
        result.fault = check_message(header, source);
        if (result.fault.any()) break;
        if (!reserve_targets(io, header.local_rank_mask, result.wait)) break;
        for (int local = 0; local < topo.local_size; ++local) {
          if (!(header.local_rank_mask >> local & 1u)) continue;
          Producer<At, Io> out = nvl_producer(io, local);
          std::memcpy(out.slot(out.tail() + pending_[local]), slot, used);
          ++pending_[local];
        }
        plan_->fwd_token[record + taken] = header.source_token;
        plan_->fwd_mask[record + taken] = header.local_rank_mask;
        ++taken;
      }
      if (taken > 0) {
        in.release(io, taken);
        got += static_cast<std::int64_t>(taken);
        result.progressed = true;
      } else if (available == 0 && result.wait.kind == WaitKind::none) {
        result.wait = in.data_wait(got, expected);
      }
    }
    for (int local = 0; local < topo.local_size; ++local) {
      if (pending_[local] == 0) continue;
      nvl_producer(io, local).publish(io, pending_[local], used);
      pending_[local] = 0;
    }
    result.done = !result.fault.any() && finished();
    return result;
  }

 private:
  FERRY_HD Producer<At, Io> nvl_producer(Io& io, int local) const {
    const OpContext& ctx = plan_->ctx;
    return Producer<At, Io>(io, ctx.topo, ctx.layout->dispatch_nvl, channel_, ctx.rank,
                            ctx.topo.rank_of(ctx.node(), local), local, ctx.local());
  }

  // True when every target ring has a free slot beyond what this step already filled.
  FERRY_HD bool reserve_targets(Io& io, std::uint32_t mask, Wait& wait) const {
    for (int local = 0; local < plan_->ctx.topo.local_size; ++local) {
      if (!(mask >> local & 1u)) continue;
      Producer<At, Io> out = nvl_producer(io, local);
      if (out.credit() <= pending_[local]) {
        if (wait.kind == WaitKind::none) wait = out.credit_wait(0, 0);
        return false;
      }
    }
    return true;
  }

  FERRY_HD Fault check_message(const MessageHeader& header, int source) const {
    const OpContext& ctx = plan_->ctx;
    Fault fault = check_header(header, ctx, RingKind::dispatch_rdma, source);
    if (fault.any()) return fault;
    if (header.source_rank != source) {
      return make_fault(FaultKind::wrong_source, RingKind::dispatch_rdma, source, header.source_rank, source);
    }
    std::uint64_t all_locals = (std::uint64_t{1} << ctx.topo.local_size) - 1;
    if (header.local_rank_mask == 0 || (header.local_rank_mask & ~all_locals) != 0) {
      return make_fault(FaultKind::bad_mask, RingKind::dispatch_rdma, source, header.local_rank_mask,
                        static_cast<std::int64_t>(all_locals));
    }
    return {};
  }

  FERRY_HD bool finished() const {
    const Topology& topo = plan_->ctx.topo;
    for (int node = 0; node < topo.num_nodes; ++node) {
      if (consumed_[node] < plan_->counts.fwd_count[node * topo.num_channels + channel_]) return false;
    }
    return true;
  }

  const DispatchPlan* plan_;
  int channel_;
  std::int64_t* consumed_;
  std::uint64_t* pending_;
};

template <class At, class Io>
class DispatchReceiver {
 public:
  // received: [L] messages taken from each forwarder's ring; seen: [R] tokens placed from each source rank.
  FERRY_HD DispatchReceiver(const DispatchPlan& plan, int channel, std::int64_t* received, std::int64_t* seen)
      : plan_(&plan), channel_(channel), received_(received), seen_(seen) {
    for (int l = 0; l < plan.ctx.topo.local_size; ++l) received_[l] = 0;
    for (int r = 0; r < plan.ctx.topo.num_ranks(); ++r) seen_[r] = 0;
  }

  FERRY_HD StepResult step(Io& io) {
    const OpContext& ctx = plan_->ctx;
    const Topology& topo = ctx.topo;
    StepResult result;
    result.stage = Stage::dispatch_receive;
    bool done = true;
    for (int forwarder = 0; forwarder < topo.local_size && !result.fault.any(); ++forwarder) {
      std::int64_t expected = expected_from(forwarder);
      std::int64_t& got = received_[forwarder];
      if (got >= expected) continue;
      int forwarder_rank = topo.rank_of(ctx.node(), forwarder);
      Consumer<At, Io> in(io, topo, ctx.layout->dispatch_nvl, channel_, ctx.rank, forwarder_rank, forwarder,
                          ctx.local());
      std::uint64_t available = min_u64(in.ready(), static_cast<std::uint64_t>(expected - got));
      available = min_u64(available, static_cast<std::uint64_t>(ctx.nvl_chunk));
      std::uint64_t head = in.head();
      std::uint64_t taken = 0;
      while (taken < available) {
        result.fault = place(in.slot(head + taken), forwarder, forwarder_rank);
        if (result.fault.any()) break;
        ++taken;
      }
      if (taken > 0) {
        in.release(io, taken);
        got += static_cast<std::int64_t>(taken);
        result.progressed = true;
      }
      if (got < expected) {
        done = false;
        if (taken == 0 && result.wait.kind == WaitKind::none) result.wait = in.data_wait(got, expected);
      }
    }
    result.done = done && !result.fault.any();
    return result;
  }

 private:
  FERRY_HD std::int64_t expected_from(int forwarder) const {
    const Topology& topo = plan_->ctx.topo;
    std::int64_t total = 0;
    for (int node = 0; node < topo.num_nodes; ++node) {
      total += plan_->counts.recv_count[topo.rank_of(node, forwarder) * topo.num_channels + channel_];
    }
    return total;
  }

  FERRY_HD Fault place(const std::byte* slot, int forwarder, int forwarder_rank) {
    const DispatchPlan& plan = *plan_;
    const OpContext& ctx = plan.ctx;
    const Topology& topo = ctx.topo;
    const DispatchSlotFormat& format = ctx.layout->dispatch_slot;
    MessageHeader header = read_header(slot);
    Fault fault = check_header(header, ctx, RingKind::dispatch_nvl, forwarder_rank);
    if (fault.any()) return fault;
    int source = header.source_rank;
    if (source < 0 || source >= topo.num_ranks() || topo.local_of(source) != forwarder) {
      return make_fault(FaultKind::wrong_source, RingKind::dispatch_nvl, forwarder_rank, source, forwarder);
    }
    std::int64_t block = source * topo.num_channels + channel_;
    std::int64_t& k = seen_[source];
    if (k >= plan.counts.recv_count[block]) {
      return make_fault(FaultKind::too_many, RingKind::dispatch_nvl, source, k + 1, plan.counts.recv_count[block]);
    }
    std::int64_t row = plan.counts.recv_offset[block] + k;
    ++k;
    plan.recv_src_rank[row] = source;
    plan.recv_src_token[row] = header.source_token;
    if (row >= plan.capacity) return {};  // worst-case outputs too small: counted, reported by the executor
    std::memcpy(plan.recv_x + row * ctx.row_bytes(), slot + format.payload, ctx.row_bytes());
    if (ctx.kind == PayloadKind::fp8_e4m3) {
      std::int64_t blocks = scale_blocks(ctx.hidden);
      std::memcpy(plan.recv_x_scales + row * blocks, slot + format.scales, sizeof(float) * blocks);
    }
    if (plan.with_topk) {
      if (header.num_topk != plan.num_topk) {
        return make_fault(FaultKind::wrong_topk, RingKind::dispatch_nvl, source, header.num_topk, plan.num_topk);
      }
      for (int k_slot = 0; k_slot < plan.num_topk; ++k_slot) {
        std::int32_t id;
        float weight;
        std::memcpy(&id, slot + format.topk_ids + sizeof(id) * k_slot, sizeof(id));
        std::memcpy(&weight, slot + format.topk_weights + sizeof(weight) * k_slot, sizeof(weight));
        std::int64_t local_id = ctx.split.local_id(id, ctx.rank);
        plan.recv_topk_idx[row * plan.num_topk + k_slot] = local_id;
        plan.recv_topk_weights[row * plan.num_topk + k_slot] = local_id >= 0 ? weight : 0.0f;
      }
    }
    return {};
  }

  const DispatchPlan* plan_;
  int channel_;
  std::int64_t* received_;
  std::int64_t* seen_;
};

}  // namespace ferry::kernels::protocol
