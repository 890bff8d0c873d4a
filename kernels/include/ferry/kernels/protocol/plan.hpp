// The plain data one operation's roles read and write on one rank: inputs, outputs, the counts that place
// every message, and the per-op parameters every message is checked against. Built by the executor (host or
// device) after the notify step; roles only read it, except for the output arrays.
//
// Index conventions: [s * C + c] for per-(source or target rank, channel) arrays, [n * C + c] for per-(node,
// channel), where C is this operation's channel count (ctx.topo.num_channels).
#pragma once

#include <cstddef>
#include <cstdint>

#include "ferry/kernels/protocol/buffer_layout.hpp"
#include "ferry/kernels/protocol/message.hpp"
#include "ferry/kernels/protocol/numeric.hpp"
#include "ferry/kernels/protocol/routing.hpp"
#include "ferry/kernels/protocol/topology.hpp"

namespace ferry::kernels::protocol {

// Parameters shared by every role of one operation on one rank.
struct OpContext {
  const BufferLayout* layout = nullptr;
  Topology topo;  // num_channels: this operation's channels (<= the buffer's)
  ExpertSplit split;
  int rank = 0;
  std::uint32_t operation = 0;    // sequence number of this operation; the same on every rank
  std::uint64_t fingerprint = 0;  // of the settings every rank must share
  PayloadKind kind = PayloadKind::bf16;
  std::int64_t hidden = 0;
  int rdma_chunk = 1;  // messages a fabric producer moves per publish (it waits for that much credit)
  int nvl_chunk = 1;   // messages a role moves per node ring before publishing

  FERRY_HD int node() const { return topo.node_of(rank); }
  FERRY_HD int local() const { return topo.local_of(rank); }
  FERRY_HD std::size_t row_bytes() const { return static_cast<std::size_t>(hidden) * element_bytes(kind); }
  FERRY_HD const RingFamily& family(RingKind kind_of_ring) const { return layout->family(kind_of_ring); }
};

// What the source, forwarder and receiver sides of one rank learn from the notify step (or a cached handle).
struct RoutingCounts {
  const std::int64_t* recv_count = nullptr;   // [R * C] tokens this rank receives from (source, channel)
  const std::int64_t* recv_offset = nullptr;  // [R * C] first output row of that block: rows sorted by (s, t)
  const std::int64_t* fwd_count = nullptr;  // [N * C] tokens this rank relays from its rail partner on node n
  const std::int64_t* fwd_offset = nullptr;    // [N * C] first record of that block in fwd_token / fwd_mask
  const std::int64_t* send_to_rank = nullptr;  // [R * C] this rank's tokens of channel c that rank r receives
  const std::int64_t* send_to_node = nullptr;  // [N * C] this rank's tokens of channel c that touch node n
};

struct DispatchPlan {
  OpContext ctx;
  RoutingCounts counts;
  DispatchFormat format;

  // Source side: this rank's tokens.
  const std::uint8_t* in_rank = nullptr;   // [T, R] the layout: 1 where token t goes to rank r
  const std::byte* x = nullptr;            // [T, hidden] of ctx.kind
  const float* x_scales = nullptr;         // [T, scale_blocks(hidden)] when fp8
  const std::int64_t* topk_idx = nullptr;  // [T, K]
  const float* topk_weights = nullptr;     // [T, K] (read only when topk travels)
  bool with_topk = true;                   // false: no topk travels (cached dispatch)
  std::int64_t num_tokens = 0;
  int num_topk = 0;

  // Receive side: rows [0, capacity) exist; rows past capacity are counted but dropped, and so is their
  // bookkeeping past record_capacity (the recv_src arrays' length: every row on the host, the worst case on a
  // GPU).
  std::int64_t capacity = 0;
  std::int64_t record_capacity = 0;
  std::byte* recv_x = nullptr;
  float* recv_x_scales = nullptr;
  std::int64_t* recv_topk_idx = nullptr;  // [rows, K] local expert ids, -1 elsewhere (when topk travels)
  float* recv_topk_weights = nullptr;     // [rows, K] 0 where the expert is not local
  std::int32_t* recv_src_rank = nullptr;  // [rows] recorded for combine
  std::int32_t* recv_src_token = nullptr;

  // Forward side: what was relayed, in ring order, recorded for combine (records past fwd_capacity are
  // dropped: only a worst-case dispatch on a GPU, which sizes them before the counts are known, can get
  // there).
  std::int32_t* fwd_token = nullptr;
  std::uint32_t* fwd_mask = nullptr;
  std::int64_t fwd_capacity = 0;
};

struct CombinePlan {
  OpContext ctx;
  RoutingCounts counts;
  CombineFormat format;

  // Receive side of the dispatch: this rank's result rows, in the dispatch's output order. Rows [0, capacity)
  // exist in y and recv_src_token; a dispatch that overflowed its worst-case sizing counted more (the counts
  // still say so), and a role that reaches `capacity` faults (past_capacity) instead of reading past them.
  const std::byte* y = nullptr;      // [rows, hidden] of ctx.kind
  const float* y_weights = nullptr;  // [rows, K] when weights are combined too (format.num_topk == K)
  const std::int32_t* recv_src_token = nullptr;
  std::int64_t capacity = 0;

  // Forward side: the dispatch's relay records, [0, fwd_capacity) of them (as `capacity`).
  const std::int32_t* fwd_token = nullptr;
  const std::uint32_t* fwd_mask = nullptr;
  std::int64_t fwd_capacity = 0;

  // Source side: the dispatch's routing and the combined output.
  const std::uint8_t* in_rank = nullptr;  // [T, R]
  std::int64_t num_tokens = 0;
  std::byte* out = nullptr;         // [T, hidden] of ctx.kind
  const std::byte* bias = nullptr;  // [T, hidden] of ctx.kind, added to every output row (optional)
  float* out_weights = nullptr;     // [T, K] combined weights (when format.num_topk == K)
};

}  // namespace ferry::kernels::protocol
