// The three roles of a dispatch, per channel, each a non-blocking step: move what can move now, report.
//
//   DispatchSender     source rank (n, l): each token of the channel once to every remote node it touches,
//   into
//                      the dispatch_rdma ring of the rail partner (n', l) there (fabric), and once to every
//                      rank of its own node it goes to, into that rank's dispatch_direct ring (a token for
//                      itself goes straight into its own output rows).
//   DispatchForwarder  rank (n, l): drains its dispatch_rdma rings (one per remote source node) and copies
//   each
//                      message once into the dispatch_nvl ring of every local rank in the message's bitmask
//                      (itself: straight into its output rows).
//   DispatchReceiver   rank (n, l): drains its dispatch_direct and dispatch_nvl rings into the output rows.
//   Every
//                      ring carries the tokens of exactly one source rank in token order, so the k-th message
//                      of the ring from source s in channel c lands in row recv_offset[s][c] + k, and the
//                      output is ordered by (source rank, source token) however the rings interleave.
//
// Each role's items (destinations, source nodes, rings) progress independently and are visited from a
// channel-dependent start: one slow peer delays only the messages meant for it.
// Deadlock freedom: receivers depend on nothing, forwarders only on receivers' credit, senders only on
// forwarders' and receivers' credit; a step never waits, it returns.
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

// Writes one received message into output row `row` of the rank: source bookkeeping always, the row itself
// only when the outputs have room (worst-case sizing too small: counted, reported by the executor).
template <class Io>
FERRY_HD inline Fault place_message(Io& io, const DispatchPlan& plan, const std::byte* slot, int source,
                                    std::int64_t row, RingKind ring, int peer) {
  const OpContext& ctx = plan.ctx;
  const DispatchFormat& format = plan.format;
  MessageHeader header = read_header(slot);
  if (plan.with_topk && header.num_topk != format.num_topk) {
    return make_fault(FaultKind::wrong_topk, ring, peer, header.num_topk, format.num_topk);
  }
  if (row < plan.record_capacity) {
    io.store(plan.recv_src_rank + row, static_cast<std::int32_t>(source));
    io.store(plan.recv_src_token + row, header.source_token);
  }
  if (row >= plan.capacity) return {};
  io.copy(plan.recv_x + row * ctx.row_bytes(), slot + format.payload, ctx.row_bytes());
  if (ctx.kind == PayloadKind::fp8_e4m3) {
    const std::int64_t blocks = scale_blocks(ctx.hidden);
    io.copy(plan.recv_x_scales + row * blocks, slot + format.scales, sizeof(float) * blocks);
  }
  if (plan.with_topk) {
    for (int k = 0; k < format.num_topk; ++k) {
      std::int32_t id;
      float weight;
      std::memcpy(&id, slot + format.topk_ids + sizeof(id) * k, sizeof(id));
      std::memcpy(&weight, slot + format.topk_weights + sizeof(weight) * k, sizeof(weight));
      const std::int64_t local_id = ctx.split.local_id(id, ctx.rank);
      io.store(plan.recv_topk_idx + row * format.num_topk + k, local_id);
      io.store(plan.recv_topk_weights + row * format.num_topk + k, local_id >= 0 ? weight : 0.0f);
    }
  }
  return {};
}

template <class Io>
class DispatchSender {
 public:
  // Per destination: the local ranks of this node first (this rank's own entry counts the rows it placed
  // itself), then the remote nodes in remote_index order.
  struct Item {
    RingState ring;
    std::int64_t cursor = 0;  // next token of the channel to consider
  };
  FERRY_HD static int num_items(const Topology& topo) { return topo.local_size + topo.num_remote_nodes(); }

  FERRY_HD DispatchSender(Io& io, const DispatchPlan& plan, int channel, RoleSlice slice, Item* items)
      : plan_(&plan), channel_(channel), slice_(slice), items_(items) {
    range_ = channel_tokens(plan.num_tokens, plan.ctx.topo.num_channels, channel);
    for (int d = 0; d < num_items(plan.ctx.topo); ++d) {
      if (!slice_.owns(d)) continue;
      Item item;
      item.cursor = range_.begin;
      if (!is_self(d)) Producer<Io>::begin(io, ring_of(d), item.ring);
      io.commit(items_ + d, item);
    }
  }

  FERRY_HD StepResult step(Io& io) {
    const OpContext& ctx = plan_->ctx;
    const int items = num_items(ctx.topo);
    StepResult result;
    result.stage = Stage::dispatch_send;
    bool done = true;
    for (int i = 0; i < items && !result.fault.any(); ++i) {
      const int d = rotated(i, items, channel_);
      if (!slice_.owns(d)) continue;
      Item item = items_[d];
      skip_untargeted(item.cursor, d);
      if (item.cursor < range_.end) {
        if (is_self(d)) {
          place_own(io, item, result);
        } else if (d < ctx.topo.local_size) {
          send_direct(io, d, item, result);
        } else {
          send_remote(io, d, item, result);
        }
      }
      if (item.cursor < range_.end) done = false;
      io.commit(items_ + d, item);
    }
    result.done = done && !result.fault.any();
    return result;
  }

 private:
  FERRY_HD bool is_self(int d) const { return d == plan_->ctx.local(); }
  FERRY_HD int remote_of(int d) const {
    return remote_node(plan_->ctx.node(), d - plan_->ctx.topo.local_size);
  }
  FERRY_HD const std::uint8_t* layout_row(std::int64_t token) const {
    return plan_->in_rank + token * plan_->ctx.topo.num_ranks();
  }

  FERRY_HD RingRef ring_of(int d) const {
    const OpContext& ctx = plan_->ctx;
    if (d < ctx.topo.local_size) {
      return direct_ring(ctx.topo, ctx.rank, ctx.family(RingKind::dispatch_direct), channel_, d);
    }
    return rail_ring(ctx.topo, ctx.rank, ctx.family(RingKind::dispatch_rdma), channel_,
                     d - ctx.topo.local_size);
  }

  FERRY_HD bool targets(std::int64_t token, int d) const {
    const Topology& topo = plan_->ctx.topo;
    if (d < topo.local_size) return layout_row(token)[topo.rank_of(plan_->ctx.node(), d)] != 0;
    return local_mask_in(layout_row(token), remote_of(d), topo) != 0;
  }

  FERRY_HD void skip_untargeted(std::int64_t& cursor, int d) const {
    while (cursor < range_.end && !targets(cursor, d)) ++cursor;
  }

  // Tokens this rank sends to destination d in this channel, all told.
  FERRY_HD std::int64_t total_for(int d) const {
    const OpContext& ctx = plan_->ctx;
    const int channels = ctx.topo.num_channels;
    if (d < ctx.topo.local_size) {
      return plan_->counts.send_to_rank[ctx.topo.rank_of(ctx.node(), d) * channels + channel_];
    }
    return plan_->counts.send_to_node[remote_of(d) * channels + channel_];
  }

  // The token's own rows for this rank: written straight into the output, in token order.
  FERRY_HD void place_own(Io& io, Item& item, StepResult& result) {
    const DispatchPlan& plan = *plan_;
    const OpContext& ctx = plan.ctx;
    const std::int64_t first_row = plan.counts.recv_offset[ctx.rank * ctx.topo.num_channels + channel_];
    int placed = 0;
    while (item.cursor < range_.end && placed < ctx.nvl_chunk) {
      const std::int64_t token = item.cursor;
      result.fault = check_ids(token, ctx.node());
      if (result.fault.any()) return;
      const std::int64_t row = first_row + static_cast<std::int64_t>(item.ring.count);
      if (row < plan.record_capacity) {
        io.store(plan.recv_src_rank + row, static_cast<std::int32_t>(ctx.rank));
        io.store(plan.recv_src_token + row, static_cast<std::int32_t>(token));
      }
      if (row < plan.capacity) place_row(io, token, row);
      ++item.ring.count;
      ++item.cursor;
      ++placed;
      skip_untargeted(item.cursor, ctx.local());
    }
    if (placed > 0) {
      io.sync();  // the copies are done before anything reports the rows as placed
      io.traffic().self.messages += static_cast<std::uint64_t>(placed);
      io.traffic().self.bytes += static_cast<std::uint64_t>(placed) * plan.format.used;
      result.progressed = true;
    }
  }

  FERRY_HD void place_row(Io& io, std::int64_t token, std::int64_t row) const {
    const DispatchPlan& plan = *plan_;
    const OpContext& ctx = plan.ctx;
    io.copy(plan.recv_x + row * ctx.row_bytes(), plan.x + token * ctx.row_bytes(), ctx.row_bytes());
    if (ctx.kind == PayloadKind::fp8_e4m3) {
      const std::int64_t blocks = scale_blocks(ctx.hidden);
      io.copy(plan.recv_x_scales + row * blocks, plan.x_scales + token * blocks, sizeof(float) * blocks);
    }
    if (!plan.with_topk) return;
    const int K = plan.num_topk;
    for (int k = 0; k < K; ++k) {
      const std::int64_t local_id = ctx.split.local_id(plan.topk_idx[token * K + k], ctx.rank);
      io.store(plan.recv_topk_idx + row * K + k, local_id);
      io.store(plan.recv_topk_weights + row * K + k, local_id >= 0 ? plan.topk_weights[token * K + k] : 0.0f);
    }
  }

  FERRY_HD void send_direct(Io& io, int d, Item& item, StepResult& result) {
    const OpContext& ctx = plan_->ctx;
    Producer<Io> out(io, ctx.topo, ctx.rank, ring_of(d), plan_->format.stride, plan_->format.used, item.ring);
    const std::uint64_t budget = min_u64(out.credit(io), static_cast<std::uint64_t>(ctx.nvl_chunk));
    if (budget == 0) {
      if (result.wait.kind == WaitKind::none) {
        result.wait = out.credit_wait(io, static_cast<std::int64_t>(item.ring.count), total_for(d));
      }
      return;
    }
    write_messages(io, out, budget, item, d, ctx.node(), result);
  }

  // Fabric: whole chunks only (or all that is left), so every put carries as many rows as the ring allows.
  FERRY_HD void send_remote(Io& io, int d, Item& item, StepResult& result) {
    const OpContext& ctx = plan_->ctx;
    Producer<Io> out(io, ctx.topo, ctx.rank, ring_of(d), plan_->format.stride, plan_->format.used, item.ring);
    const std::uint64_t remaining = static_cast<std::uint64_t>(total_for(d)) - item.ring.count;
    const std::uint64_t chunk = static_cast<std::uint64_t>(ctx.rdma_chunk);
    const std::uint64_t budget = min_u64(out.credit(io), chunk);
    if (budget < min_u64(chunk, remaining)) {
      if (result.wait.kind == WaitKind::none) {
        result.wait = out.credit_wait(io, static_cast<std::int64_t>(item.ring.count), total_for(d));
      }
      return;
    }
    write_messages(io, out, budget, item, d, remote_of(d), result);
  }

  FERRY_HD void write_messages(Io& io, Producer<Io>& out, std::uint64_t budget, Item& item, int d, int node,
                               StepResult& result) {
    std::uint64_t written = 0;
    while (written < budget && item.cursor < range_.end) {
      result.fault = write_message(io, out.slot(written), item.cursor, node);
      if (result.fault.any()) break;
      ++written;
      ++item.cursor;
      skip_untargeted(item.cursor, d);
    }
    if (written > 0) {
      out.publish(io, written);
      result.progressed = true;
    }
  }

  // The ids that fall on `node` must name exactly the node's ranks the layout sends the token to: the layout
  // routes, the ids only travel, and a layout computed from other ids would deliver wrong rows.
  FERRY_HD Fault check_ids(std::int64_t token, int node) const {
    const DispatchPlan& plan = *plan_;
    if (plan.topk_idx == nullptr) return {};
    const OpContext& ctx = plan.ctx;
    std::uint32_t from_ids = 0;
    for (int k = 0; k < plan.num_topk; ++k) {
      const std::int64_t expert = plan.topk_idx[token * plan.num_topk + k];
      if (expert != -1 && !ctx.split.valid(expert)) {
        Fault fault = make_fault(FaultKind::bad_expert, RingKind::dispatch_rdma, ctx.rank, expert,
                                 ctx.split.num_experts);
        fault.token = token;
        return fault;
      }
      if (expert_on_node(expert, node, ctx.split, ctx.topo)) {
        from_ids |= 1u << ctx.topo.local_of(ctx.split.rank_of(expert));
      }
    }
    const std::uint32_t from_layout = local_mask_in(layout_row(token), node, ctx.topo);
    if (from_ids != from_layout) {
      Fault fault =
          make_fault(FaultKind::routing_mismatch, RingKind::dispatch_rdma, ctx.rank, from_ids, node);
      fault.token = token;
      return fault;
    }
    return {};
  }

  FERRY_HD Fault write_message(Io& io, std::byte* slot, std::int64_t token, int node) const {
    const DispatchPlan& plan = *plan_;
    const OpContext& ctx = plan.ctx;
    const DispatchFormat& format = plan.format;
    Fault fault = check_ids(token, node);
    if (fault.any()) return fault;
    const std::uint32_t mask = local_mask_in(layout_row(token), node, ctx.topo);
    const MessageHeader header = make_header(ctx, ctx.rank, token, mask, format.num_topk);
    io.store(reinterpret_cast<MessageHeader*>(slot), header);  // from this thread: never copy()
    for (int k = 0; k < format.num_topk; ++k) {
      const std::int64_t expert = plan.topk_idx[token * plan.num_topk + k];
      const bool here = expert_on_node(expert, node, ctx.split, ctx.topo);
      io.store(reinterpret_cast<std::int32_t*>(slot + format.topk_ids) + k,
               here ? static_cast<std::int32_t>(expert) : std::int32_t{-1});
      io.store(reinterpret_cast<float*>(slot + format.topk_weights) + k,
               here ? plan.topk_weights[token * plan.num_topk + k] : 0.0f);
    }
    if (ctx.kind == PayloadKind::fp8_e4m3) {
      const std::int64_t blocks = scale_blocks(ctx.hidden);
      io.copy(slot + format.scales, plan.x_scales + token * blocks, sizeof(float) * blocks);
    }
    io.copy(slot + format.payload, plan.x + token * ctx.row_bytes(), ctx.row_bytes());
    return {};
  }

  const DispatchPlan* plan_;
  int channel_;
  RoleSlice slice_;
  TokenRange range_;
  Item* items_;
};

template <class Io>
class DispatchForwarder {
 public:
  // Per remote source node: its fabric ring and the rows this rank placed for itself; per (source node, local
  // rank) the node ring the forwarder fills at that rank.
  struct Item {
    RingState in;
    std::int64_t placed = 0;
  };
  FERRY_HD static int num_items(const Topology& topo) { return topo.num_remote_nodes(); }
  FERRY_HD static int num_out_rings(const Topology& topo) {
    return topo.num_remote_nodes() * topo.local_size;
  }

  FERRY_HD DispatchForwarder(Io& io, const DispatchPlan& plan, int channel, RoleSlice slice, Item* items,
                             RingState* out_rings)
      : plan_(&plan), channel_(channel), slice_(slice), items_(items), out_rings_(out_rings) {
    const Topology& topo = plan.ctx.topo;
    for (int i = 0; i < num_items(topo); ++i) {
      if (!slice_.owns(i)) continue;
      Item item;
      Consumer<Io>::begin(io, in_ring(i), item.in);
      io.commit(items_ + i, item);
      for (int local = 0; local < topo.local_size; ++local) {
        if (local == plan.ctx.local()) continue;
        RingState state;
        Producer<Io>::begin(io, out_ring(i, local), state);
        io.commit(out_rings_ + i * topo.local_size + local, state);
      }
    }
  }

  FERRY_HD StepResult step(Io& io) {
    const Topology& topo = plan_->ctx.topo;
    const int items = num_items(topo);
    StepResult result;
    result.stage = Stage::dispatch_forward;
    bool done = true;
    for (int n = 0; n < items && !result.fault.any(); ++n) {
      const int i = rotated(n, items, channel_);
      if (!slice_.owns(i)) continue;
      if (!forward(io, i, result)) done = false;
    }
    result.done = done && !result.fault.any();
    return result;
  }

 private:
  FERRY_HD RingRef in_ring(int i) const {
    const OpContext& ctx = plan_->ctx;
    return rail_ring(ctx.topo, ctx.rank, ctx.family(RingKind::dispatch_rdma), channel_, i);
  }
  FERRY_HD RingRef out_ring(int i, int local) const {
    const OpContext& ctx = plan_->ctx;
    return relay_ring(ctx.topo, ctx.rank, ctx.family(RingKind::dispatch_nvl), channel_, local, i);
  }

  // Moves what it can for remote source node index i; returns whether that node's block is finished.
  FERRY_HD bool forward(Io& io, int i, StepResult& result) {
    const DispatchPlan& plan = *plan_;
    const OpContext& ctx = plan.ctx;
    const Topology& topo = ctx.topo;
    const int L = topo.local_size;
    const int node = remote_node(ctx.node(), i);
    const int source = topo.rail_partner(ctx.rank, node);
    const std::int64_t block = node * topo.num_channels + channel_;
    const std::int64_t expected = plan.counts.fwd_count[block];
    Item item = items_[i];
    if (static_cast<std::int64_t>(item.in.count) >= expected) return true;

    Consumer<Io> in(io, topo, ctx.rank, in_ring(i), plan.format.stride, item.in);
    const std::uint64_t left = static_cast<std::uint64_t>(expected) - item.in.count;
    const std::uint64_t available =
        min_u64(min_u64(in.ready(io), left), static_cast<std::uint64_t>(ctx.rdma_chunk));
    // The node rings are read where the group keeps them (out_rings_) and changed only at the end of the
    // step.
    std::uint32_t pending[kMaxLocalRanks];
    for (int local = 0; local < L; ++local) pending[local] = 0;
    const std::int64_t first_row = plan.counts.recv_offset[source * topo.num_channels + channel_];
    std::uint64_t taken = 0;
    while (taken < available) {
      const std::byte* slot = in.slot(taken);
      const MessageHeader header = read_header(slot);
      result.fault = check_message(header, source);
      if (result.fault.any()) break;
      if (!reserve(io, i, header.local_rank_mask, pending, result.wait)) break;
      for (int local = 0; local < L; ++local) {
        if (!(header.local_rank_mask >> local & 1u) || local == ctx.local()) continue;
        Producer<Io> out(io, topo, ctx.rank, out_ring(i, local), plan.format.stride, plan.format.used,
                         out_rings_[i * L + local]);
        io.copy(out.slot(pending[local]), slot, plan.format.used);
        ++pending[local];
      }
      if (header.local_rank_mask >> ctx.local() & 1u) {
        result.fault =
            place_message(io, plan, slot, source, first_row + item.placed, RingKind::dispatch_rdma, source);
        if (result.fault.any()) break;
        ++item.placed;
        io.traffic().self.messages += 1;
        io.traffic().self.bytes += plan.format.used;
      }
      const std::int64_t record =
          plan.counts.fwd_offset[block] + static_cast<std::int64_t>(item.in.count + taken);
      if (record < plan.fwd_capacity) {
        io.store(plan.fwd_token + record, header.source_token);
        io.store(plan.fwd_mask + record, header.local_rank_mask);
      }
      ++taken;
    }
    for (int local = 0; local < L; ++local) {
      if (pending[local] == 0) continue;
      RingState state = out_rings_[i * L + local];
      Producer<Io> out(io, topo, ctx.rank, out_ring(i, local), plan.format.stride, plan.format.used, state);
      out.publish(io, pending[local]);
      io.commit(out_rings_ + i * L + local, state);
    }
    if (taken > 0) {
      in.consume(taken);
      result.progressed = true;
    } else if (available == 0 && result.wait.kind == WaitKind::none) {
      result.wait = in.data_wait(io, static_cast<std::int64_t>(item.in.count), expected);
    }
    const bool finished = static_cast<std::int64_t>(item.in.count) >= expected;
    in.release(io, credit_batch(in.window.slots, static_cast<std::uint64_t>(ctx.rdma_chunk)), finished);
    io.commit(items_ + i, item);
    return finished;
  }

  // True when every target ring has a free slot beyond what this step already filled.
  FERRY_HD bool reserve(Io& io, int i, std::uint32_t mask, const std::uint32_t* pending, Wait& wait) const {
    const OpContext& ctx = plan_->ctx;
    const int L = ctx.topo.local_size;
    for (int local = 0; local < L; ++local) {
      if (!(mask >> local & 1u) || local == ctx.local()) continue;
      Producer<Io> out(io, ctx.topo, ctx.rank, out_ring(i, local), plan_->format.stride, plan_->format.used,
                       out_rings_[i * L + local]);
      if (out.credit(io) <= pending[local]) {
        if (wait.kind == WaitKind::none) wait = out.credit_wait(io, 0, 0);
        return false;
      }
    }
    return true;
  }

  FERRY_HD Fault check_message(const MessageHeader& header, int source) const {
    const OpContext& ctx = plan_->ctx;
    Fault fault = check_header(header, ctx, RingKind::dispatch_rdma, source, source);
    if (fault.any()) return fault;
    const std::uint64_t all_locals = (std::uint64_t{1} << ctx.topo.local_size) - 1;
    if (header.local_rank_mask == 0 || (header.local_rank_mask & ~all_locals) != 0) {
      return make_fault(FaultKind::bad_mask, RingKind::dispatch_rdma, source, header.local_rank_mask,
                        static_cast<std::int64_t>(all_locals));
    }
    return {};
  }

  const DispatchPlan* plan_;
  int channel_;
  RoleSlice slice_;
  Item* items_;
  RingState* out_rings_;
};

template <class Io>
class DispatchReceiver {
 public:
  // Per incoming ring: the direct rings of the local ranks first (index = local rank), then the node rings
  // (index L + forwarder * NR + remote node index). A rank's rings from itself stay unused.
  FERRY_HD static int num_items(const Topology& topo) { return topo.local_size * topo.num_nodes; }

  FERRY_HD DispatchReceiver(Io& io, const DispatchPlan& plan, int channel, RoleSlice slice, RingState* rings)
      : plan_(&plan), channel_(channel), slice_(slice), rings_(rings) {
    for (int i = 0; i < num_items(plan.ctx.topo); ++i) {
      if (!slice_.owns(i) || from_self(i)) continue;
      RingState state;
      Consumer<Io>::begin(io, ring_of(i), state);
      io.commit(rings_ + i, state);
    }
  }

  FERRY_HD StepResult step(Io& io) {
    const OpContext& ctx = plan_->ctx;
    const Topology& topo = ctx.topo;
    const int items = num_items(topo);
    StepResult result;
    result.stage = Stage::dispatch_receive;
    bool done = true;
    for (int n = 0; n < items && !result.fault.any(); ++n) {
      const int i = rotated(n, items, channel_);
      if (!slice_.owns(i) || from_self(i)) continue;
      const int source = source_of(i);
      const std::int64_t expected = plan_->counts.recv_count[source * topo.num_channels + channel_];
      RingState state = rings_[i];
      if (static_cast<std::int64_t>(state.count) >= expected) continue;
      Consumer<Io> in(io, topo, ctx.rank, ring_of(i), plan_->format.stride, state);
      const std::uint64_t left = static_cast<std::uint64_t>(expected) - state.count;
      const std::uint64_t available =
          min_u64(min_u64(in.ready(io), left), static_cast<std::uint64_t>(ctx.nvl_chunk));
      const std::int64_t first_row = plan_->counts.recv_offset[source * topo.num_channels + channel_];
      std::uint64_t taken = 0;
      while (taken < available) {
        const std::byte* slot = in.slot(taken);
        result.fault = check_header(read_header(slot), ctx, in.ref.family->kind, in.ref.peer_rank, source);
        if (result.fault.any()) break;
        const std::int64_t row = first_row + static_cast<std::int64_t>(state.count + taken);
        result.fault = place_message(io, *plan_, slot, source, row, in.ref.family->kind, in.ref.peer_rank);
        if (result.fault.any()) break;
        ++taken;
      }
      if (taken > 0) {
        in.consume(taken);
        result.progressed = true;
      }
      const bool finished = static_cast<std::int64_t>(state.count) >= expected;
      in.release(io, min_u64(static_cast<std::uint64_t>(ctx.nvl_chunk), in.window.slots), finished);
      io.commit(rings_ + i, state);
      if (!finished) {
        done = false;
        if (taken == 0 && result.wait.kind == WaitKind::none) {
          result.wait = in.data_wait(io, static_cast<std::int64_t>(state.count), expected);
        }
      }
    }
    result.done = done && !result.fault.any();
    return result;
  }

 private:
  FERRY_HD bool from_self(int i) const {
    const int L = plan_->ctx.topo.local_size;
    const int forwarder = i < L ? i : (i - L) / plan_->ctx.topo.num_remote_nodes();
    return forwarder == plan_->ctx.local();
  }

  FERRY_HD int source_of(int i) const {
    const OpContext& ctx = plan_->ctx;
    const int L = ctx.topo.local_size;
    if (i < L) return ctx.topo.rank_of(ctx.node(), i);
    const int NR = ctx.topo.num_remote_nodes();
    return ctx.topo.rank_of(remote_node(ctx.node(), (i - L) % NR), (i - L) / NR);
  }

  FERRY_HD RingRef ring_of(int i) const {
    const OpContext& ctx = plan_->ctx;
    const int L = ctx.topo.local_size;
    if (i < L) return direct_ring(ctx.topo, ctx.rank, ctx.family(RingKind::dispatch_direct), channel_, i);
    const int NR = ctx.topo.num_remote_nodes();
    return relay_ring(ctx.topo, ctx.rank, ctx.family(RingKind::dispatch_nvl), channel_, (i - L) / NR,
                      (i - L) % NR);
  }

  const DispatchPlan* plan_;
  int channel_;
  RoleSlice slice_;
  RingState* rings_;
};

}  // namespace ferry::kernels::protocol
