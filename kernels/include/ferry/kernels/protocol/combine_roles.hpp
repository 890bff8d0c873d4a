// The three roles of a combine, per channel: the dispatch path in reverse, with sums in a fixed order.
//
//   CombineSender     receiving rank (n, l): returns its result row of every token it received to where the
//   token
//                     came from: into the combine_direct ring of the source when the source is on this node,
//                     else into the combine_nvl ring of the forwarder (n, l') that delivered it, l' = the
//                     source's local rank. Rows this rank would send to itself stay where they are and are
//                     read in place.
//   CombineForwarder  rank (n, l'): for each remote source node, walks its relay records of the dispatch in
//                     order; for each token it takes the row of every local rank in the token's bitmask, sums
//                     them in fp32 in ascending local-rank order, rounds to the row type and sends one
//                     message into the combine_rdma ring of the source rank over the fabric.
//   CombineReceiver   source rank (n, l): for each token of the channel in order, sums in fp32 the partial
//   rows
//                     of every node the token touched in ascending node order — its own node's partial being
//                     the sum of the own-node rows in ascending local-rank order, rounded, exactly as a
//                     forwarder makes it — starting from the bias when there is one, and writes out[t]; a
//                     token that touched no node gets the bias, or zeros.
// Rows are summed as given: combine does not apply topk weights (as DeepEP; weight the rows before combine).
// When the caller passes the received rows' topk weights, they are summed along the same path (fp32), which
// gives every token its weights back (each slot is non-zero on one rank only).
// Because every ring is consumed in the order it is filled and every sum has a fixed order, the result is the
// same bit for bit on every run, whatever the channel count or the timing.
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

// The row (and weights) of one received token, wherever it is: in a message slot or in this rank's results.
struct RowRef {
  const std::byte* row = nullptr;
  const std::byte* weights = nullptr;
};

FERRY_HD inline RowRef row_in_slot(const CombinePlan& plan, const std::byte* slot) {
  return {slot + plan.format.payload, slot + plan.format.topk_weights};
}

// A row or relay record at or past what the dispatch could record (it overflowed its worst-case sizing):
// reading it would read past the arrays, so the role faults first.
FERRY_HD inline Fault past_capacity(RingKind ring, int peer, std::int64_t index, std::int64_t capacity) {
  return make_fault(FaultKind::past_capacity, ring, peer, index, capacity);
}

FERRY_HD inline RowRef row_in_results(const CombinePlan& plan, std::int64_t row) {
  const int K = plan.format.num_topk;
  return {plan.y + row * plan.ctx.row_bytes(),
          K > 0 ? reinterpret_cast<const std::byte*>(plan.y_weights + row * K) : nullptr};
}

// The rows (and weights) of up to N terms of a reduction, as two arrays the reduction reads in place: on a
// GPU these arrays are every thread's own stack, so they are not copied again.
template <int N>
struct RowList {
  const std::byte* rows[N];
  const std::byte* weights[N];
  int count = 0;
  FERRY_HD void add(const RowRef& ref) {
    rows[count] = ref.row;
    weights[count] = ref.weights;
    ++count;
  }
};

// Sums rows (and weights) as numeric.hpp's ReduceRows describes; `group` may be nullptr (no group).
template <class Io, int T, int G>
FERRY_HD inline void reduce_into(Io& io, const CombinePlan& plan, const RowList<T>& terms,
                                 const RowList<G>* group, int group_at, const std::byte* bias, std::byte* out,
                                 std::byte* out_weights) {
  ReduceRows job;
  job.kind = plan.ctx.kind;
  job.hidden = plan.ctx.hidden;
  job.terms = terms.rows;
  job.num_terms = terms.count;
  job.group = group != nullptr ? group->rows : nullptr;
  job.group_size = group != nullptr ? group->count : 0;
  job.group_at = group_at;
  job.bias = bias;
  job.out = out;
  io.reduce(job);
  if (plan.format.num_topk == 0 || out_weights == nullptr) return;
  job.terms = terms.weights;
  job.group = group != nullptr ? group->weights : nullptr;
  job.kind = PayloadKind::fp32;
  job.hidden = plan.format.num_topk;
  job.bias = nullptr;
  job.out = out_weights;
  io.reduce(job);
}

template <class Io>
class CombineSender {
 public:
  // Per source rank s: the ring its rows go back on (unused for this rank itself and for sources whose
  // forwarder is this rank).
  FERRY_HD static int num_items(const Topology& topo) { return topo.num_ranks(); }

  FERRY_HD CombineSender(Io& io, const CombinePlan& plan, int channel, RoleSlice slice, RingState* rings)
      : plan_(&plan), channel_(channel), slice_(slice), rings_(rings) {
    for (int s = 0; s < num_items(plan.ctx.topo); ++s) {
      if (!slice_.owns(s) || kept(s)) continue;
      RingState state;
      Producer<Io>::begin(io, ring_of(s), state);
      io.commit(rings_ + s, state);
    }
  }

  FERRY_HD StepResult step(Io& io) {
    const CombinePlan& plan = *plan_;
    const OpContext& ctx = plan.ctx;
    const Topology& topo = ctx.topo;
    const int items = num_items(topo);
    StepResult result;
    result.stage = Stage::combine_send;
    bool done = true;
    for (int n = 0; n < items; ++n) {
      const int s = rotated(n, items, channel_);
      if (!slice_.owns(s) || kept(s)) continue;
      const std::int64_t block = s * topo.num_channels + channel_;
      const std::int64_t expected = plan.counts.recv_count[block];
      RingState state = rings_[s];
      if (static_cast<std::int64_t>(state.count) >= expected) continue;
      Producer<Io> out(io, topo, ctx.rank, ring_of(s), plan.format.stride, plan.format.used, state);
      const std::uint64_t left = static_cast<std::uint64_t>(expected) - state.count;
      const std::uint64_t budget =
          min_u64(min_u64(out.credit(io), static_cast<std::uint64_t>(ctx.nvl_chunk)), left);
      const std::int64_t last_row = plan.counts.recv_offset[block] + static_cast<std::int64_t>(state.count) +
                                    static_cast<std::int64_t>(budget) - 1;
      if (budget > 0 && last_row >= plan.capacity) {
        result.fault = past_capacity(ring_kind_of(s), s, last_row, plan.capacity);
        result.done = false;
        return result;
      }
      for (std::uint64_t w = 0; w < budget; ++w) {
        const std::int64_t row = plan.counts.recv_offset[block] + static_cast<std::int64_t>(state.count + w);
        std::byte* slot = out.slot(w);
        const MessageHeader header = make_header(ctx, s, plan.recv_src_token[row], 0, plan.format.num_topk);
        io.store(reinterpret_cast<MessageHeader*>(slot), header);  // from this thread: never copy()
        const RowRef from = row_in_results(plan, row);
        if (plan.format.num_topk > 0) {
          io.copy(slot + plan.format.topk_weights, from.weights, sizeof(float) * plan.format.num_topk);
        }
        io.copy(slot + plan.format.payload, from.row, ctx.row_bytes());
      }
      if (budget > 0) {
        out.publish(io, budget);
        io.commit(rings_ + s, state);
        result.progressed = true;
      }
      if (static_cast<std::int64_t>(state.count) < expected) {
        done = false;
        if (budget == 0 && result.wait.kind == WaitKind::none) {
          result.wait = out.credit_wait(io, static_cast<std::int64_t>(state.count), expected);
        }
      }
    }
    result.done = done;
    return result;
  }

 private:
  // Rows for this rank itself, or for a source whose forwarder is this rank: read in place by the receiver or
  // the forwarder role of this rank.
  FERRY_HD bool kept(int s) const {
    const OpContext& ctx = plan_->ctx;
    return s == ctx.rank || (ctx.topo.node_of(s) != ctx.node() && ctx.topo.local_of(s) == ctx.local());
  }

  FERRY_HD RingKind ring_kind_of(int s) const {
    const OpContext& ctx = plan_->ctx;
    return ctx.topo.node_of(s) == ctx.node() ? RingKind::combine_direct : RingKind::combine_nvl;
  }

  FERRY_HD RingRef ring_of(int s) const {
    const OpContext& ctx = plan_->ctx;
    const Topology& topo = ctx.topo;
    if (topo.node_of(s) == ctx.node()) {
      return direct_ring(topo, ctx.rank, ctx.family(RingKind::combine_direct), channel_, topo.local_of(s));
    }
    return relay_ring(topo, ctx.rank, ctx.family(RingKind::combine_nvl), channel_, topo.local_of(s),
                      remote_index(ctx.node(), topo.node_of(s)));
  }

  const CombinePlan* plan_;
  int channel_;
  RoleSlice slice_;
  RingState* rings_;
};

template <class Io>
class CombineForwarder {
 public:
  // Per remote source node: the fabric ring to the source and the rows of this rank's own results used so
  // far; per (source node, local rank) the node ring that local rank fills here.
  struct Item {
    RingState out;
    std::int64_t own_rows = 0;
  };
  FERRY_HD static int num_items(const Topology& topo) { return topo.num_remote_nodes(); }
  FERRY_HD static int num_in_rings(const Topology& topo) { return topo.num_remote_nodes() * topo.local_size; }

  FERRY_HD CombineForwarder(Io& io, const CombinePlan& plan, int channel, RoleSlice slice, Item* items,
                            RingState* in_rings)
      : plan_(&plan), channel_(channel), slice_(slice), items_(items), in_rings_(in_rings) {
    const Topology& topo = plan.ctx.topo;
    for (int i = 0; i < num_items(topo); ++i) {
      if (!slice_.owns(i)) continue;
      Item item;
      Producer<Io>::begin(io, out_ring(i), item.out);
      io.commit(items_ + i, item);
      for (int local = 0; local < topo.local_size; ++local) {
        if (local == plan.ctx.local()) continue;
        RingState state;
        Consumer<Io>::begin(io, in_ring(i, local), state);
        io.commit(in_rings_ + i * topo.local_size + local, state);
      }
    }
  }

  FERRY_HD StepResult step(Io& io) {
    const int items = num_items(plan_->ctx.topo);
    StepResult result;
    result.stage = Stage::combine_forward;
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
  FERRY_HD RingRef out_ring(int i) const {
    const OpContext& ctx = plan_->ctx;
    return rail_ring(ctx.topo, ctx.rank, ctx.family(RingKind::combine_rdma), channel_, i);
  }
  FERRY_HD RingRef in_ring(int i, int local) const {
    const OpContext& ctx = plan_->ctx;
    return relay_ring(ctx.topo, ctx.rank, ctx.family(RingKind::combine_nvl), channel_, local, i);
  }

  // Moves what it can for remote source node index i; returns whether that node's block is finished.
  FERRY_HD bool forward(Io& io, int i, StepResult& result) {
    const CombinePlan& plan = *plan_;
    const OpContext& ctx = plan.ctx;
    const Topology& topo = ctx.topo;
    const int L = topo.local_size;
    const int node = remote_node(ctx.node(), i);
    const int source = topo.rail_partner(ctx.rank, node);
    const std::int64_t block = node * topo.num_channels + channel_;
    const std::int64_t expected = plan.counts.fwd_count[block];
    Item item = items_[i];
    if (static_cast<std::int64_t>(item.out.count) >= expected) return true;

    // Fabric: whole chunks only (or all that is left).
    Producer<Io> out(io, topo, ctx.rank, out_ring(i), plan.format.stride, plan.format.used, item.out);
    const std::uint64_t chunk = static_cast<std::uint64_t>(ctx.rdma_chunk);
    const std::uint64_t left = static_cast<std::uint64_t>(expected) - item.out.count;
    const std::uint64_t budget = min_u64(out.credit(io), chunk);
    if (budget < min_u64(chunk, left)) {
      if (result.wait.kind == WaitKind::none) {
        result.wait = out.credit_wait(io, static_cast<std::int64_t>(item.out.count), expected);
      }
      return false;
    }

    // The node rings are read where the group keeps them (in_rings_) and changed only at the end of the step.
    std::uint32_t peeked[kMaxLocalRanks];
    for (int local = 0; local < L; ++local) peeked[local] = 0;
    const std::int64_t own_first = plan.counts.recv_offset[source * topo.num_channels + channel_];
    std::int64_t own_rows = item.own_rows;
    std::uint64_t pending = 0;
    while (pending < min_u64(budget, left)) {
      const std::int64_t record =
          plan.counts.fwd_offset[block] + static_cast<std::int64_t>(item.out.count + pending);
      if (record >= plan.fwd_capacity) {
        result.fault = past_capacity(RingKind::combine_rdma, source, record, plan.fwd_capacity);
        break;
      }
      const std::int32_t token = plan.fwd_token[record];
      const std::uint32_t mask = plan.fwd_mask[record];
      if ((mask >> ctx.local() & 1u) && own_first + own_rows >= plan.capacity) {
        result.fault = past_capacity(RingKind::combine_rdma, source, own_first + own_rows, plan.capacity);
        break;
      }
      RowList<kMaxLocalRanks> rows;
      bool ready = true;
      for (int local = 0; local < L && ready; ++local) {
        if (!(mask >> local & 1u)) continue;
        if (local == ctx.local()) {
          rows.add(row_in_results(plan, own_first + own_rows));
          continue;
        }
        Consumer<Io> in(io, topo, ctx.rank, in_ring(i, local), plan.format.stride, in_rings_[i * L + local]);
        if (in.ready(io) <= peeked[local]) {
          if (result.wait.kind == WaitKind::none) result.wait = in.data_wait(io, 0, 0);
          ready = false;
          break;
        }
        const std::byte* slot = in.slot(peeked[local]);
        const MessageHeader header = read_header(slot);
        result.fault = check_header(header, ctx, RingKind::combine_nvl, in.ref.peer_rank, source);
        if (!result.fault.any() && header.source_token != token) {
          result.fault = make_fault(FaultKind::wrong_token, RingKind::combine_nvl, in.ref.peer_rank,
                                    header.source_token, token);
        }
        if (result.fault.any()) {
          ready = false;
          break;
        }
        rows.add(row_in_slot(plan, slot));
      }
      if (!ready) break;
      std::byte* slot = out.slot(pending);
      const MessageHeader header = make_header(ctx, source, token, mask, plan.format.num_topk);
      io.store(reinterpret_cast<MessageHeader*>(slot), header);  // from this thread: never copy()
      reduce_into(io, plan, rows, static_cast<const RowList<1>*>(nullptr), 0, nullptr,
                  slot + plan.format.payload, slot + plan.format.topk_weights);
      for (int local = 0; local < L; ++local) {
        if (!(mask >> local & 1u)) continue;
        if (local == ctx.local()) {
          ++own_rows;
          io.traffic().self.messages += 1;
          io.traffic().self.bytes += plan.format.used;
        } else {
          ++peeked[local];
        }
      }
      ++pending;
    }
    if (pending > 0) {
      out.publish(io, pending);
      result.progressed = true;
    }
    const bool finished = static_cast<std::int64_t>(item.out.count) >= expected;
    for (int local = 0; local < L; ++local) {
      if (local == ctx.local()) continue;
      RingState state = in_rings_[i * L + local];
      Consumer<Io> in(io, topo, ctx.rank, in_ring(i, local), plan.format.stride, state);
      in.consume(peeked[local]);
      in.release(io, min_u64(static_cast<std::uint64_t>(ctx.nvl_chunk), in.window.slots), finished);
      if (peeked[local] > 0 || finished) io.commit(in_rings_ + i * L + local, state);
    }
    item.own_rows = own_rows;
    io.commit(items_ + i, item);
    return finished;
  }

  const CombinePlan* plan_;
  int channel_;
  RoleSlice slice_;
  Item* items_;
  RingState* in_rings_;
};

template <class Io>
class CombineReceiver {
 public:
  struct Cursor {
    std::int64_t token = 0;     // next token of the channel
    std::int64_t own_rows = 0;  // rows of this rank's own results used so far
  };
  // Rings: the direct rings of the local ranks (index = local rank), then the fabric rings of the remote
  // nodes (index L + remote node index).
  FERRY_HD static int num_rings(const Topology& topo) { return topo.local_size + topo.num_remote_nodes(); }

  FERRY_HD CombineReceiver(Io& io, const CombinePlan& plan, int channel, Cursor* cursor, RingState* rings)
      : plan_(&plan), channel_(channel), cursor_(cursor), rings_(rings) {
    range_ = channel_tokens(plan.num_tokens, plan.ctx.topo.num_channels, channel);
    Cursor start;
    start.token = range_.begin;
    io.commit(cursor_, start);
    for (int i = 0; i < num_rings(plan.ctx.topo); ++i) {
      if (i == plan.ctx.local()) continue;
      RingState state;
      Consumer<Io>::begin(io, ring_of(i), state);
      io.commit(rings_ + i, state);
    }
  }

  FERRY_HD StepResult step(Io& io) {
    const CombinePlan& plan = *plan_;
    const OpContext& ctx = plan.ctx;
    const Topology& topo = ctx.topo;
    const int L = topo.local_size;
    const int rings = num_rings(topo);
    StepResult result;
    result.stage = Stage::combine_receive;
    Cursor cursor = *cursor_;
    // The rings are read where the group keeps them (rings_) and changed only at the end of the step.
    std::uint32_t peeked[kMaxLocalRanks + kMaxNodes];
    for (int i = 0; i < rings; ++i) peeked[i] = 0;
    const std::int64_t own_first = plan.counts.recv_offset[ctx.rank * topo.num_channels + channel_];
    int processed = 0;
    while (cursor.token < range_.end && processed < ctx.rdma_chunk) {
      const std::int64_t token = cursor.token;
      const std::uint8_t* in_rank = plan.in_rank + token * topo.num_ranks();
      const std::uint32_t own_mask = local_mask_in(in_rank, ctx.node(), topo);
      const std::uint64_t nodes = node_mask_in(in_rank, topo);
      RowList<kMaxLocalRanks> group;
      RowList<kMaxNodes> terms;
      std::uint8_t used[kMaxLocalRanks + kMaxNodes];  // rings this token's rows come from
      int group_at = 0;
      int num_used = 0;
      bool ready = true;
      for (int local = 0; local < L && ready; ++local) {
        if (!(own_mask >> local & 1u)) continue;
        RowRef ref;
        if (local == ctx.local()) {
          if (own_first + cursor.own_rows >= plan.capacity) {
            result.fault =
                past_capacity(RingKind::combine_direct, ctx.rank, own_first + cursor.own_rows, plan.capacity);
            ready = false;
            break;
          }
          ref = row_in_results(plan, own_first + cursor.own_rows);
        } else {
          ready = take(io, local, token, peeked, ref, result);
          used[num_used++] = static_cast<std::uint8_t>(local);
        }
        group.add(ref);
      }
      for (int node = 0; node < topo.num_nodes && ready; ++node) {
        if (!(nodes >> node & 1u) || node == ctx.node()) continue;
        if (node < ctx.node()) ++group_at;
        const int ring = L + remote_index(ctx.node(), node);
        RowRef ref;
        ready = take(io, ring, token, peeked, ref, result);
        terms.add(ref);
        used[num_used++] = static_cast<std::uint8_t>(ring);
      }
      if (!ready) break;
      const std::byte* bias = plan.bias != nullptr ? plan.bias + token * ctx.row_bytes() : nullptr;
      std::byte* out_weights =
          plan.out_weights != nullptr
              ? reinterpret_cast<std::byte*>(plan.out_weights + token * plan.format.num_topk)
              : nullptr;
      reduce_into(io, plan, terms, &group, group_at, bias, plan.out + token * ctx.row_bytes(), out_weights);
      if (own_mask >> ctx.local() & 1u) {
        ++cursor.own_rows;
        io.traffic().self.messages += 1;
        io.traffic().self.bytes += plan.format.used;
      }
      for (int u = 0; u < num_used; ++u) ++peeked[used[u]];
      ++cursor.token;
      ++processed;
      result.progressed = true;
    }
    for (int i = 0; i < rings; ++i) {
      if (i == ctx.local()) continue;
      RingState state = rings_[i];
      Consumer<Io> in(io, topo, ctx.rank, ring_of(i), plan.format.stride, state);
      in.consume(peeked[i]);
      const bool last = static_cast<std::int64_t>(state.count) >= expected_on(i);
      const std::uint64_t batch =
          i < L ? min_u64(static_cast<std::uint64_t>(ctx.nvl_chunk), in.window.slots)
                : credit_batch(in.window.slots, static_cast<std::uint64_t>(ctx.rdma_chunk));
      in.release(io, batch, last);
      if (peeked[i] > 0 || state.returned != rings_[i].returned) io.commit(rings_ + i, state);
    }
    io.commit(cursor_, cursor);
    result.done = !result.fault.any() && cursor.token >= range_.end;
    return result;
  }

 private:
  FERRY_HD RingRef ring_of(int i) const {
    const OpContext& ctx = plan_->ctx;
    const int L = ctx.topo.local_size;
    if (i < L) return direct_ring(ctx.topo, ctx.rank, ctx.family(RingKind::combine_direct), channel_, i);
    return rail_ring(ctx.topo, ctx.rank, ctx.family(RingKind::combine_rdma), channel_, i - L);
  }

  // Messages this operation takes from ring i: this rank's tokens that went to local rank i, or to node i.
  FERRY_HD std::int64_t expected_on(int i) const {
    const OpContext& ctx = plan_->ctx;
    const int L = ctx.topo.local_size;
    const int channels = ctx.topo.num_channels;
    if (i < L) return plan_->counts.send_to_rank[ctx.topo.rank_of(ctx.node(), i) * channels + channel_];
    return plan_->counts.send_to_node[remote_node(ctx.node(), i - L) * channels + channel_];
  }

  // The next unread message of ring i, which must be token's row; false when it has not arrived (or is
  // wrong).
  FERRY_HD bool take(Io& io, int i, std::int64_t token, const std::uint32_t* peeked, RowRef& ref,
                     StepResult& result) {
    const OpContext& ctx = plan_->ctx;
    Consumer<Io> in(io, ctx.topo, ctx.rank, ring_of(i), plan_->format.stride, rings_[i]);
    if (in.ready(io) <= peeked[i]) {
      if (result.wait.kind == WaitKind::none) {
        result.wait = in.data_wait(io, token - range_.begin, range_.size());
      }
      return false;
    }
    const std::byte* slot = in.slot(peeked[i]);
    const MessageHeader header = read_header(slot);
    result.fault = check_header(header, ctx, in.ref.family->kind, in.ref.peer_rank, ctx.rank);
    if (!result.fault.any() && header.source_token != token) {
      result.fault = make_fault(FaultKind::wrong_token, in.ref.family->kind, in.ref.peer_rank,
                                header.source_token, token);
    }
    if (result.fault.any()) return false;
    ref = row_in_slot(*plan_, slot);
    return true;
  }

  const CombinePlan* plan_;
  int channel_;
  TokenRange range_;
  Cursor* cursor_;
  RingState* rings_;
};

}  // namespace ferry::kernels::protocol
