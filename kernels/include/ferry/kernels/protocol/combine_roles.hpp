// The three roles of a combine, per channel: the dispatch path in reverse, with sums in a fixed order.
//
//   CombineSender     receiving rank (n, l): sends its result row of every token it received back into the
//                     combine_nvl ring of the forwarder (n, l') that delivered it, l' = local rank of the source.
//                     Per forwarder, rows go in (source node, source token) order.
//   CombineForwarder  rank (n, l'): walks its relay records of the dispatch in the same order; for each token
//                     it takes the row of every local rank in the token's bitmask, sums them in fp32 in ascending
//                     local-rank order, rounds to the row type and sends one message into the combine_rdma ring
//                     of the source rank (over the fabric unless the source is itself).
//   CombineReceiver   source rank (n, l): for each token of the channel in order, sums the partial rows of every
//                     node the token touched in fp32 in ascending node order and writes out[t]; a token that
//                     touched no node gets zeros.
// Rows are summed as given: combine does not apply topk weights (as DeepEP; weight the rows before combine).
// Because every ring is consumed in the order it is filled and every sum has a fixed order, the result is the
// same bit for bit on every run.
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
class CombineSender {
 public:
  // node_cursor: [L] source node being sent to each forwarder; row_cursor: [L] next row within that block.
  FERRY_HD CombineSender(const CombinePlan& plan, int channel, std::int64_t* node_cursor, std::int64_t* row_cursor)
      : plan_(&plan), channel_(channel), node_cursor_(node_cursor), row_cursor_(row_cursor) {
    for (int l = 0; l < plan.ctx.topo.local_size; ++l) {
      node_cursor_[l] = 0;
      row_cursor_[l] = 0;
    }
  }

  FERRY_HD StepResult step(Io& io) {
    const OpContext& ctx = plan_->ctx;
    const Topology& topo = ctx.topo;
    const std::size_t used = ctx.layout->combine_slot.used_bytes(ctx.kind, ctx.hidden);
    StepResult result;
    result.stage = Stage::combine_send;
    bool done = true;
    for (int forwarder = 0; forwarder < topo.local_size; ++forwarder) {
      advance(forwarder);
      if (node_cursor_[forwarder] >= topo.num_nodes) continue;
      Producer<At, Io> out(io, topo, ctx.layout->combine_nvl, channel_, ctx.rank,
                           topo.rank_of(ctx.node(), forwarder), forwarder, ctx.local());
      std::uint64_t budget = min_u64(out.credit(), static_cast<std::uint64_t>(ctx.nvl_chunk));
      std::uint64_t tail = out.tail();
      std::uint64_t written = 0;
      while (written < budget && node_cursor_[forwarder] < topo.num_nodes) {
        int source = topo.rank_of(static_cast<int>(node_cursor_[forwarder]), forwarder);
        std::int64_t row = plan_->counts.recv_offset[source * topo.num_channels + channel_] + row_cursor_[forwarder];
        std::byte* slot = out.slot(tail + written);
        MessageHeader header = make_header(ctx, source, plan_->recv_src_token[row], 0, 0);
        std::memcpy(slot, &header, sizeof(header));
        std::memcpy(slot + ctx.layout->combine_slot.payload, plan_->y + row * ctx.row_bytes(), ctx.row_bytes());
        ++written;
        ++row_cursor_[forwarder];
        advance(forwarder);
      }
      if (written > 0) {
        out.publish(io, written, used);
        result.progressed = true;
      }
      if (node_cursor_[forwarder] < topo.num_nodes) {
        done = false;
        if (written == 0 && result.wait.kind == WaitKind::none) result.wait = out.credit_wait(0, 0);
      }
    }
    result.done = done;
    return result;
  }

 private:
  // Skips finished (source node, channel) blocks of the rows that came through `forwarder`.
  FERRY_HD void advance(int forwarder) {
    const Topology& topo = plan_->ctx.topo;
    while (node_cursor_[forwarder] < topo.num_nodes) {
      int source = topo.rank_of(static_cast<int>(node_cursor_[forwarder]), forwarder);
      if (row_cursor_[forwarder] < plan_->counts.recv_count[source * topo.num_channels + channel_]) return;
      ++node_cursor_[forwarder];
      row_cursor_[forwarder] = 0;
    }
  }

  const CombinePlan* plan_;
  int channel_;
  std::int64_t* node_cursor_;
  std::int64_t* row_cursor_;
};

template <class At, class Io>
class CombineForwarder {
 public:
  // cursor: [2] (source node, record within its block); peeked: [L] rows taken from each local rank's ring in
  // this step and not yet returned as credit.
  FERRY_HD CombineForwarder(const CombinePlan& plan, int channel, std::int64_t* cursor, std::uint64_t* peeked)
      : plan_(&plan), channel_(channel), cursor_(cursor), peeked_(peeked) {
    cursor_[0] = 0;
    cursor_[1] = 0;
    for (int l = 0; l < plan.ctx.topo.local_size; ++l) peeked_[l] = 0;
  }

  FERRY_HD StepResult step(Io& io) {
    const OpContext& ctx = plan_->ctx;
    const Topology& topo = ctx.topo;
    const int channels = topo.num_channels;
    const std::size_t used = ctx.layout->combine_slot.used_bytes(ctx.kind, ctx.hidden);
    StepResult result;
    result.stage = Stage::combine_forward;
    std::int64_t& node = cursor_[0];
    std::int64_t& k = cursor_[1];
    std::uint64_t pending = 0;
    int processed = 0;
    advance();
    while (node < topo.num_nodes && processed < ctx.rdma_chunk) {
      int source = topo.rank_of(static_cast<int>(node), ctx.local());
      std::int64_t block = node * channels + channel_;
      std::int64_t record = plan_->counts.fwd_offset[block] + k;
      std::int32_t token = plan_->fwd_token[record];
      std::uint32_t mask = plan_->fwd_mask[record];
      Producer<At, Io> out(io, topo, ctx.layout->combine_rdma, channel_, ctx.rank, source, static_cast<int>(node),
                           ctx.node());
      const std::byte* rows[kMaxLocalRanks];
      if (!gather_rows(io, mask, source, token, rows, result)) break;
      if (out.credit() <= pending) {
        result.wait = out.credit_wait(k, plan_->counts.fwd_count[block]);
        break;
      }
      std::byte* slot = out.slot(out.tail() + pending);
      MessageHeader header = make_header(ctx, source, token, mask, 0);
      std::memcpy(slot, &header, sizeof(header));
      sum_rows(rows, mask, slot + ctx.layout->combine_slot.payload);
      for (int local = 0; local < topo.local_size; ++local) peeked_[local] += mask >> local & 1u;
      ++pending;
      ++processed;
      ++k;
      result.progressed = true;
      if (k >= plan_->counts.fwd_count[block]) {
        out.publish(io, pending, used);
        pending = 0;
        advance();
      }
    }
    if (pending > 0) {
      Producer<At, Io>(io, topo, ctx.layout->combine_rdma, channel_, ctx.rank,
                       topo.rank_of(static_cast<int>(node), ctx.local()), static_cast<int>(node), ctx.node())
          .publish(io, pending, used);
    }
    for (int local = 0; local < topo.local_size; ++local) {
      if (peeked_[local] == 0) continue;
      nvl_consumer(io, local).release(io, peeked_[local]);
      peeked_[local] = 0;
    }
    result.done = !result.fault.any() && node >= topo.num_nodes;
    return result;
  }

 private:
  FERRY_HD void advance() {
    const Topology& topo = plan_->ctx.topo;
    while (cursor_[0] < topo.num_nodes &&
           cursor_[1] >= plan_->counts.fwd_count[cursor_[0] * topo.num_channels + channel_]) {
      ++cursor_[0];
      cursor_[1] = 0;
    }
  }

  FERRY_HD Consumer<At, Io> nvl_consumer(Io& io, int local) const {
    const OpContext& ctx = plan_->ctx;
    return Consumer<At, Io>(io, ctx.topo, ctx.layout->combine_nvl, channel_, ctx.rank,
                            ctx.topo.rank_of(ctx.node(), local), local, ctx.local());
  }

  // The row of (source, token) from every local rank in `mask`, or false when one has not arrived yet.
  FERRY_HD bool gather_rows(Io& io, std::uint32_t mask, int source, std::int32_t token, const std::byte** rows,
                            StepResult& result) const {
    const OpContext& ctx = plan_->ctx;
    for (int local = 0; local < ctx.topo.local_size; ++local) {
      if (!(mask >> local & 1u)) continue;
      Consumer<At, Io> in = nvl_consumer(io, local);
      if (in.ready() <= peeked_[local]) {
        result.wait = in.data_wait(0, 0);
        return false;
      }
      const std::byte* slot = in.slot(in.head() + peeked_[local]);
      MessageHeader header = read_header(slot);
      result.fault = check_header(header, ctx, RingKind::combine_nvl, in.producer_rank);
      if (!result.fault.any() && header.source_rank != source) {
        result.fault = make_fault(FaultKind::wrong_source, RingKind::combine_nvl, in.producer_rank,
                                  header.source_rank, source);
      }
      if (!result.fault.any() && header.source_token != token) {
        result.fault = make_fault(FaultKind::wrong_token, RingKind::combine_nvl, in.producer_rank,
                                  header.source_token, token);
      }
      if (result.fault.any()) return false;
      rows[local] = slot + ctx.layout->combine_slot.payload;
    }
    return true;
  }

  // Ascending local rank: the fixed order that makes combine deterministic.
  FERRY_HD void sum_rows(const std::byte* const* rows, std::uint32_t mask, std::byte* out) const {
    const OpContext& ctx = plan_->ctx;
    const std::byte* selected[kMaxLocalRanks];
    int count = 0;
    for (int local = 0; local < ctx.topo.local_size; ++local) {
      if (mask >> local & 1u) selected[count++] = rows[local];
    }
    protocol::sum_rows(ctx.kind, selected, count, ctx.hidden, out);
  }

  const CombinePlan* plan_;
  int channel_;
  std::int64_t* cursor_;
  std::uint64_t* peeked_;
};

template <class At, class Io>
class CombineReceiver {
 public:
  // cursor: [1] next token of the channel; peeked: [N] partial rows taken from each node's ring in this step.
  FERRY_HD CombineReceiver(const CombinePlan& plan, int channel, std::int64_t* cursor, std::uint64_t* peeked)
      : plan_(&plan), channel_(channel), cursor_(cursor), peeked_(peeked) {
    range_ = channel_tokens(plan.num_tokens, plan.ctx.topo.num_channels, channel);
    cursor_[0] = range_.begin;
    for (int n = 0; n < plan.ctx.topo.num_nodes; ++n) peeked_[n] = 0;
  }

  FERRY_HD StepResult step(Io& io) {
    const OpContext& ctx = plan_->ctx;
    const Topology& topo = ctx.topo;
    StepResult result;
    result.stage = Stage::combine_receive;
    std::int64_t& token = cursor_[0];
    int processed = 0;
    while (token < range_.end && processed < ctx.rdma_chunk) {
      std::uint64_t nodes = node_mask_of(plan_->topk_idx + token * plan_->num_topk, plan_->num_topk, ctx.split, topo);
      const std::byte* rows[kMaxNodes];
      if (!gather_rows(io, nodes, token, rows, result)) break;
      // Ascending node order: the fixed order that makes combine deterministic.
      const std::byte* selected[kMaxNodes];
      int count = 0;
      for (int node = 0; node < topo.num_nodes; ++node) {
        if (nodes >> node & 1u) selected[count++] = rows[node];
      }
      protocol::sum_rows(ctx.kind, selected, count, ctx.hidden, plan_->out + token * ctx.row_bytes());
      for (int node = 0; node < topo.num_nodes; ++node) peeked_[node] += nodes >> node & 1u;
      ++token;
      ++processed;
      result.progressed = true;
    }
    for (int node = 0; node < topo.num_nodes; ++node) {
      if (peeked_[node] == 0) continue;
      rdma_consumer(io, node).release(io, peeked_[node]);
      peeked_[node] = 0;
    }
    result.done = !result.fault.any() && token >= range_.end;
    return result;
  }

 private:
  FERRY_HD Consumer<At, Io> rdma_consumer(Io& io, int node) const {
    const OpContext& ctx = plan_->ctx;
    return Consumer<At, Io>(io, ctx.topo, ctx.layout->combine_rdma, channel_, ctx.rank,
                            ctx.topo.rank_of(node, ctx.local()), node, ctx.node());
  }

  FERRY_HD bool gather_rows(Io& io, std::uint64_t nodes, std::int64_t token, const std::byte** rows,
                            StepResult& result) const {
    const OpContext& ctx = plan_->ctx;
    for (int node = 0; node < ctx.topo.num_nodes; ++node) {
      if (!(nodes >> node & 1u)) continue;
      Consumer<At, Io> in = rdma_consumer(io, node);
      if (in.ready() <= peeked_[node]) {
        result.wait = in.data_wait(token - range_.begin, range_.size());
        return false;
      }
      const std::byte* slot = in.slot(in.head() + peeked_[node]);
      MessageHeader header = read_header(slot);
      result.fault = check_header(header, ctx, RingKind::combine_rdma, in.producer_rank);
      if (!result.fault.any() && header.source_rank != ctx.rank) {
        result.fault = make_fault(FaultKind::wrong_source, RingKind::combine_rdma, in.producer_rank,
                                  header.source_rank, ctx.rank);
      }
      if (!result.fault.any() && header.source_token != token) {
        result.fault = make_fault(FaultKind::wrong_token, RingKind::combine_rdma, in.producer_rank,
                                  header.source_token, token);
      }
      if (result.fault.any()) return false;
      rows[node] = slot + ctx.layout->combine_slot.payload;
    }
    return true;
  }

  const CombinePlan* plan_;
  int channel_;
  TokenRange range_;
  std::int64_t* cursor_;
  std::uint64_t* peeked_;
};

}  // namespace ferry::kernels::protocol
