// The roles of the low-latency mode (low_latency.hpp), written once for the host and the GPU against the Io
// policy (io.hpp, role_loop.hpp) plus two bulk operations of this mode:
//   void quantize(const QuantizeRow& job)    bf16 row -> e4m3 bytes + per-128 scales (shared by the group)
//   void weighted_sum(const WeightedRows& job)   out = bf16(sum_k w_k * row_k), topk order (shared)
//
// An operation is a sequence of phases; every phase finishes on this rank before the next begins (the host
// runs them in order on one thread, the GPU as consecutive kernels), which is what orders one phase's writes
// before the next phase's signals:
//   dispatch, send half:     acquire -> scatter (tokens) -> publish (destination ranks)
//   dispatch, receive half:  gather (local experts) -> release
//   combine, send half:      acquire -> return ((local expert, destination) blocks) -> publish (destinations)
//   combine, receive half:   wait (experts) -> reduce (tokens) -> release
// The send half never waits for data, so a caller can issue it and take the receive half later (the hook).
// Waits never fail the operation: a peer that stays silent for ctx.mask_after_ns, or that ctx.gone names
// (the job's store counted it dead), is masked (the mask says so), skipped by every later phase, and its
// rows read as absent. Faults (a word of another operation, a count beyond the slots) fail it.
//
// Roles keep their progress (cursors, wait start) in their own members: every thread of a group runs the same
// code on values that are the same in every thread (counters through load_acquire, clocks through now(),
// inputs and masks that no phase changes while it runs), so every thread's copy moves in step; only the
// leader stores. The mask is only written by the waiting phases (acquire, gather, wait, barrier) and only
// read by the other phases.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ferry/kernels/protocol/endpoints.hpp"
#include "ferry/kernels/protocol/hd.hpp"
#include "ferry/kernels/protocol/io.hpp"
#include "ferry/kernels/protocol/low_latency.hpp"
#include "ferry/kernels/protocol/step.hpp"
#include "ferry/kernels/protocol/topology.hpp"

namespace ferry::kernels::protocol {

inline constexpr int kLowLatencyMaxTopk = 16;

// ---- bulk operations (reference forms; executors provide the same bits) ----

struct QuantizeRow {
  const std::uint16_t* x = nullptr;  // bf16 [hidden]
  std::int64_t hidden = 0;           // a multiple of 128
  bool round_scale = false;
  std::uint8_t* out = nullptr;  // e4m3 [hidden]
  float* scales = nullptr;      // [hidden / 128] scale_inv
};

FERRY_HD inline void quantize_row(const QuantizeRow& job) {
  for (std::int64_t b = 0; b * kFp8BlockSize < job.hidden; ++b) {
    const std::int64_t first = b * kFp8BlockSize;
    const int n = static_cast<int>(job.hidden - first < kFp8BlockSize ? job.hidden - first : kFp8BlockSize);
    job.scales[b] = quantize_block(job.x + first, n, job.round_scale, job.out + first);
  }
}

struct WeightedRows {
  const std::uint16_t* rows[kLowLatencyMaxTopk] = {};  // bf16 [hidden] each
  float weights[kLowLatencyMaxTopk] = {};
  int count = 0;
  std::int64_t hidden = 0;
  std::uint16_t* out = nullptr;  // bf16 [hidden]; zeros when count == 0
};

FERRY_HD inline float weighted_element(const WeightedRows& job, std::int64_t i) {
  float acc = 0.0f;
  for (int k = 0; k < job.count; ++k)
    acc = add_rn(acc, mul_rn(job.weights[k], bf16_to_float(job.rows[k][i])));
  return acc;
}

FERRY_HD inline void weighted_sum_rows(const WeightedRows& job) {
  for (std::int64_t i = 0; i < job.hidden; ++i) job.out[i] = float_to_bf16(weighted_element(job, i));
}

// ---- what one operation's phases read and write on one rank ----

struct LowLatencyContext {
  LowLatencyLayout layout;
  Topology topo;  // num_nodes, local_size (channels unused)
  int rank = 0;
  std::uint32_t operation = 0;  // counted from the last clean; the same on every rank
  int buffer = 0;               // operation % 2
  std::uint64_t mask_after_ns = 0;
  std::uint64_t* mask = nullptr;  // [R] this rank's view: non-zero = skipped
  // [R] or null: non-zero for a rank known dead (the host fills it from the job's store, StoreWatch). A wait
  // for a silent peer that is gone masks it at once instead of after mask_after_ns, so the survivors of a
  // death skip it within moments of one another and none outwaits another into masking a live rank.
  const std::uint64_t* gone = nullptr;

  FERRY_HD int num_ranks() const { return layout.R(); }
  FERRY_HD std::int64_t local_experts() const { return layout.shape.local_experts(); }
  FERRY_HD int rank_of_expert(std::int64_t expert) const {
    return static_cast<int>(expert / layout.shape.local_experts());
  }
  FERRY_HD Reach reach(int peer) const { return reach_between(topo, rank, peer); }
};

struct LowLatencyDispatchPlan {
  LowLatencyContext ctx;
  LowLatencyMessage message;
  bool round_scale = false;
  bool ue8m0 = false;
  std::uint32_t tag = 0;
  std::uint32_t shape_check = 0;  // low_latency_shape_check(ctx.layout.shape, message.fp8)
  // Source side.
  const std::uint16_t* x = nullptr;        // [T, hidden] bf16
  const std::int64_t* topk_idx = nullptr;  // [T, K]
  std::int64_t num_tokens = 0;
  int num_topk = 0;
  const std::int32_t* slot = nullptr;        // [T, K] position of the row at its expert; -1: not sent
  const std::int32_t* send_count = nullptr;  // [E] rows for each expert
  // Receive side ([E/R] local experts, R*T rows each).
  std::byte* recv_x = nullptr;                // [E/R][R*T][hidden] e4m3 or bf16
  float* recv_scales = nullptr;               // fp8, not ue8m0: [E/R][blocks][R*T]
  std::uint8_t* recv_scales_ue8m0 = nullptr;  // ue8m0: [E/R][blocks/4][R*T][4]
  std::int32_t* recv_count = nullptr;         // [E/R]
  std::int32_t* recv_src_info = nullptr;      // [E/R][R*T] source token of every packed row
  std::int64_t* layout_range = nullptr;       // [E/R][R] pack_range(begin, count) per source
  std::int64_t* wait_ns = nullptr;            // [E/R][R] this operation's wait for each source's word
};

struct LowLatencyCombinePlan {
  LowLatencyContext ctx;
  std::uint32_t tag = 0;
  // Expert side: this rank's results for the rows it received, packed as the dispatch packed them.
  const std::uint16_t* x = nullptr;  // [E/R][R*T][hidden] bf16 (the staging itself with zero copy)
  bool zero_copy = false;
  const std::int64_t* layout_range = nullptr;  // [E/R][R] from the dispatch
  // Source side.
  const std::int64_t* topk_idx = nullptr;    // [T, K]
  const float* topk_weights = nullptr;       // [T, K]
  const std::int32_t* slot = nullptr;        // [T, K] from the dispatch
  const std::int32_t* send_count = nullptr;  // [E] from the dispatch: rows each expert must return
  std::int64_t num_tokens = 0;
  int num_topk = 0;
  std::uint16_t* out = nullptr;     // [T, hidden] bf16
  std::int64_t* wait_ns = nullptr;  // [E] this operation's wait for each expert's word
  std::int64_t* row_base =
      nullptr;  // [E] scratch: offset of the expert's rows in its rank's region (or ours)
};

// What follows from an operation's number (counted from the last clean): its buffer and the tags of its
// words. The host derives them when it issues the operation; the GPU again in every phase kernel from a
// counter its kernels keep in device memory, because a CUDA graph fixes kernel parameters at capture and a
// replayed graph is another operation (kernels/cuda/low_latency_kernels.cu).
FERRY_HD inline void set_operation(LowLatencyContext& ctx, std::uint32_t operation) {
  ctx.operation = operation;
  ctx.buffer = static_cast<int>(operation % kLowLatencyBuffers);
}
FERRY_HD inline LowLatencyDispatchPlan at_operation(LowLatencyDispatchPlan plan, std::uint32_t operation) {
  set_operation(plan.ctx, operation);
  plan.tag = low_latency_tag(operation, false);
  return plan;
}
FERRY_HD inline LowLatencyCombinePlan at_operation(LowLatencyCombinePlan plan, std::uint32_t operation) {
  set_operation(plan.ctx, operation);
  plan.tag = low_latency_tag(operation, true);
  return plan;
}

// A role that has not moved for this long is stuck for another reason than a silent peer (the waits mask a
// peer after mask_after_ns): both executors give up then (the GPU never before its own timeout either).
// Saturates at the largest signed 64-bit count, which std::chrono::nanoseconds still holds.
FERRY_HD inline std::uint64_t low_latency_stuck_after_ns(std::uint64_t mask_after_ns) {
  constexpr std::uint64_t kSlack = 1'000'000'000ull;
  constexpr std::uint64_t kMax = 0x7fffffffffffffffull;
  return mask_after_ns > (kMax - kSlack) / 2 ? kMax : 2 * mask_after_ns + kSlack;
}

// Each row's position at its expert, in (token, slot) order, and the rows per expert: the part of the routing
// both ends derive from topk_idx alone (slots of -1 get -1). A token sends at most one row to an expert,
// which is what bounds an expert's slots per source by the tokens: an id outside [0, E) or named twice by one
// token is refused (the first such (token * K + slot) is returned, else -1).
struct SlotProblem {
  std::int64_t index = -1;
  bool duplicate = false;  // else out of range

  FERRY_HD bool any() const { return index >= 0; }
};

FERRY_HD inline SlotProblem assign_slots(const std::int64_t* topk_idx, std::int64_t num_tokens, int num_topk,
                                         std::int64_t num_experts, std::int32_t* slot,
                                         std::int32_t* send_count) {
  for (std::int64_t e = 0; e < num_experts; ++e) send_count[e] = 0;
  SlotProblem problem;
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    const std::int64_t* row = topk_idx + t * num_topk;
    for (int k = 0; k < num_topk; ++k) {
      const std::int64_t i = t * num_topk + k;
      const std::int64_t expert = row[k];
      slot[i] = -1;
      if (expert == -1) continue;
      bool repeated = false;
      for (int j = 0; j < k; ++j) repeated = repeated || row[j] == expert;
      if (expert < 0 || expert >= num_experts || repeated) {
        if (!problem.any()) problem = SlotProblem{i, repeated};
        continue;
      }
      slot[i] = send_count[expert]++;
    }
  }
  return problem;
}

// ---- shared helpers ----

template <class Io>
FERRY_HD inline std::byte* region_of(Io& io, const LowLatencyContext& ctx, int peer) {
  return peer == ctx.rank ? io.local() : io.node_peer(ctx.topo.local_of(peer));
}

template <class Io>
FERRY_HD inline bool is_masked(Io& io, const LowLatencyContext& ctx, int peer) {
  return io.load_private(ctx.mask + peer) != 0;
}

// The uniform view of a mask word in a phase that may change masks.
template <class Io>
FERRY_HD inline bool is_masked_now(Io& io, const LowLatencyContext& ctx, int peer) {
  return io.load_acquire(ctx.mask + peer, Reach::self) != 0;
}

// Whether a wait for a silent `peer` that began `waited` ns ago gives up on it now (and masks it).
template <class Io>
FERRY_HD inline bool stop_waiting_for(Io& io, const LowLatencyContext& ctx, int peer, std::uint64_t waited) {
  if (waited > ctx.mask_after_ns) return true;
  return ctx.gone != nullptr && io.load_acquire(ctx.gone + peer, Reach::node) != 0;
}

// Mask words: 0 = taking part; kMaskedByCaller = low_latency_update_mask_buffer's (the rank may be alive and
// still finishing an operation it took part in); kMaskedByWait = a wait gave up on it (silent for
// mask_after_ns, or gone), so nothing more is expected from it.
inline constexpr std::uint64_t kMaskedByCaller = 1;
inline constexpr std::uint64_t kMaskedByWait = 2;

template <class Io>
FERRY_HD inline void mask_peer(Io& io, const LowLatencyContext& ctx, int peer) {
  io.sync();
  if (io.leader()) io.store_release(ctx.mask + peer, kMaskedByWait, Reach::self);
  io.sync();
}

FERRY_HD inline StepResult low_latency_result(Stage stage) {
  StepResult result;
  result.stage = stage;
  return result;
}

FERRY_HD inline Wait word_wait(int peer, std::uint64_t seen, std::uint64_t expected) {
  Wait wait;
  wait.kind = WaitKind::data;
  wait.peer_rank = peer;
  wait.head = seen;
  wait.tail = expected;
  return wait;
}

// Waiting for one word with the masking deadline: keeps when the wait began.
struct WaitClock {
  std::uint64_t since = 0;  // 0: not waiting

  template <class Io>
  FERRY_HD std::uint64_t waited(Io& io) {
    const std::uint64_t now = io.now() | 1;
    if (since == 0) since = now;
    return now - since;
  }
  FERRY_HD void reset() { since = 0; }
};

FERRY_HD inline Fault low_latency_fault(FaultKind kind, int peer, std::int64_t got, std::int64_t expected) {
  Fault fault;
  fault.kind = kind;
  fault.peer_rank = peer;
  fault.got = got;
  fault.expected = expected;
  return fault;
}

// A word of this operation, or the fault that names the other operation it belongs to.
FERRY_HD inline Fault check_tag(std::uint64_t word, std::uint32_t tag, int peer) {
  if (signal_tag(word) == tag) return {};
  return low_latency_fault(FaultKind::wrong_operation, peer, signal_tag(word), tag);
}

template <class Io>
FERRY_HD inline void count_path(Io& io, Reach reach, std::uint64_t messages, std::uint64_t bytes) {
  PathCount& path = path_of(io.traffic(), reach);
  path.messages += messages;
  path.bytes += bytes;
}

// Leader only: adds `delta` to this rank's word in a peer's region. Across nodes the fabric adds (after this
// rank's earlier puts to the peer); within the node this rank, the word's only writer, stores its last value
// plus the delta.
template <class Io>
FERRY_HD inline void add_to_word(Io& io, const LowLatencyContext& ctx, int peer, std::size_t word_offset,
                                 std::uint64_t delta) {
  const Reach reach = ctx.reach(peer);
  if (reach == Reach::fabric) {
    io.signal(peer, word_offset, delta);
    io.traffic().fabric_signals += 1;
    return;
  }
  std::uint64_t* word = counter_word(region_of(io, ctx, peer), word_offset);
  io.store_release(word, io.load_private(word) + delta, reach);
}

// What one destination gets for one of the experts a publish covers: the block of rows a put carries to
// another node (bytes 0: none) and the count published for it.
struct PublishedBlock {
  std::size_t staged = 0;  // in this rank's region
  std::size_t slot = 0;    // in the peer's region
  std::size_t bytes = 0;
  std::uint64_t count = 0;  // low_latency_signal(tag, rows), within the node maybe with_begin
};

// The send half's last phase, both kinds: for every unmasked destination (from the rank after this one, so
// ranks do not all start with rank 0), across nodes each expert's block of rows as one put, then this rank's
// counts for the peer (`block_of(peer, local_expert)`) and the block's check, then its arrival word. Across
// nodes the counts go from counts_out as one put that the arrival rides on (the fabric adds it after this
// rank's earlier puts to the peer); within the node the rows are in place, the counts are stored in the
// peer's block and the arrival is released after them. One signal per (operation, peer), whatever the number
// of experts; every post for one peer comes from one group (the GPU's groups post to rings of their own,
// drained in no order between rings).
template <class Io, class BlockOf>
FERRY_HD inline void publish_to_peers(Io& io, const LowLatencyContext& ctx, RoleSlice slice,
                                      std::uint32_t tag, BlockOf block_of) {
  const int R = ctx.num_ranks();
  const std::int64_t L = ctx.local_experts();
  io.sync();
  for (int i = 0; i < R; ++i) {
    const int peer = rotated(i + 1, R, ctx.rank);
    if (!slice.owns(peer) || is_masked(io, ctx, peer) || !io.leader()) continue;
    const bool fabric = ctx.reach(peer) == Reach::fabric;
    // The block: staged for one put across nodes, the peer's own within the node.
    std::uint64_t* counts =
        fabric ? counter_word(io.local(), ctx.layout.count_out(ctx.buffer, peer, 0))
               : counter_word(region_of(io, ctx, peer), ctx.layout.count_in(ctx.buffer, ctx.rank, 0));
    for (std::int64_t le = 0; le < L; ++le) {
      const PublishedBlock block = block_of(peer, le);
      if (fabric && block.bytes > 0) {
        io.put(peer, block.staged, block.slot, block.bytes);
        io.traffic().fabric_puts += 1;
      }
      io.store(counts + le, block.count);
    }
    io.store(counts + L, count_block_check(ctx.layout.shape));
    if (fabric) {
      io.put(peer, ctx.layout.count_out(ctx.buffer, peer, 0), ctx.layout.count_in(ctx.buffer, ctx.rank, 0),
             ctx.layout.count_block_bytes());
      io.traffic().fabric_puts += 1;
    }
    add_to_word(io, ctx, peer, ctx.layout.arrival_word(ctx.buffer, ctx.rank), low_latency_signal(tag, 0));
  }
}

// Whether `peer`'s counts for this operation are in: its arrival word's delta since the last release took it
// (0: not yet), or the fault that names the other operation the delta belongs to.
struct Arrival {
  bool in = false;
  Fault fault;
};

template <class Io>
FERRY_HD inline Arrival arrival_of(Io& io, const LowLatencyContext& ctx, int peer, std::uint32_t tag) {
  const std::uint64_t value =
      io.load_acquire(counter_word(io.local(), ctx.layout.arrival_word(ctx.buffer, peer)), ctx.reach(peer));
  const std::uint64_t delta =
      value - io.load_private(counter_word(io.local(), ctx.layout.arrival_seen_word(ctx.buffer, peer)));
  Arrival arrival;
  if (delta == 0) return arrival;
  arrival.in = true;
  const std::int64_t arrivals = signal_count(delta) + 1;  // each arrival adds 1 in the count bits
  if (arrivals != 1) {
    arrival.fault = low_latency_fault(FaultKind::stacked_arrivals, peer, arrivals, 1);
  } else if (delta != low_latency_signal(tag, 0)) {
    arrival.fault = low_latency_fault(FaultKind::wrong_operation, peer, signal_tag(delta), tag);
  }
  return arrival;
}

// The count `peer` published for `local_expert` (read after its arrival: the acquire orders it), or the fault
// that names what is wrong with it: a block of a peer that places its counts differently (another number of
// experts, so the check word differs or was never written), or a count of another operation.
struct PublishedCount {
  std::int64_t count = 0;
  std::int64_t begin = 0;  // within the node, combine: where the rows begin in the peer's staging
  Fault fault;
};

template <class Io>
FERRY_HD inline PublishedCount published_count(Io& io, const LowLatencyContext& ctx, int peer,
                                               std::int64_t local_expert, std::uint32_t tag) {
  const std::uint64_t check = io.load_acquire(
      counter_word(io.local(), ctx.layout.count_in(ctx.buffer, peer, ctx.local_experts())), ctx.reach(peer));
  const std::uint64_t value = io.load_acquire(
      counter_word(io.local(), ctx.layout.count_in(ctx.buffer, peer, local_expert)), ctx.reach(peer));
  PublishedCount published;
  published.count = signal_count(value);
  published.begin = signal_begin(value);
  const std::uint64_t expected = count_block_check(ctx.layout.shape);
  if (check != expected) {
    published.fault = low_latency_fault(FaultKind::bad_count_block, peer, static_cast<std::int64_t>(check),
                                        static_cast<std::int64_t>(expected));
  } else {
    published.fault = check_tag(value, tag, peer);
    // A count of this operation is never negative (unwritten words read 0: count -1); a clean clears blocks.
    if (!published.fault.any() && published.count < 0)
      published.fault = low_latency_fault(FaultKind::bad_count_block, peer, static_cast<std::int64_t>(value),
                                          static_cast<std::int64_t>(expected));
  }
  return published;
}

// clean_low_latency_buffer, between its barriers (nothing is written then): this rank's private copies take
// the values of its arrival and release words, and the count blocks peers published here are cleared (a
// block's check depends on the shape only, and operations count from 0 again after a clean, so a block left
// from before would pass for one of the next operations when a peer cleaned with another shape).
template <class Io>
FERRY_HD inline void sync_private_words(Io& io, const LowLatencyLayout& layout) {
  io.sync();
  if (io.leader()) {
    for (int b = 0; b < kLowLatencyBuffers; ++b) {
      for (int peer = 0; peer < layout.R(); ++peer) {
        io.store_private(counter_word(io.local(), layout.arrival_seen_word(b, peer)),
                         io.load_private(counter_word(io.local(), layout.arrival_word(b, peer))));
        for (std::size_t w = 0; w < layout.count_block_words(); ++w)
          io.store_private(counter_word(io.local(), layout.count_in(b, peer, static_cast<std::int64_t>(w))),
                           0);
      }
      // A peer owes nothing more than it has released, unless it still owes a use it took part in (a peer the
      // caller masked while it was reading skipped the clean's barriers): that stays owed.
      for (int peer = 0; peer < layout.R(); ++peer) {
        std::uint64_t* due = counter_word(io.local(), layout.release_due_word(b, peer));
        const std::uint64_t released =
            io.load_private(counter_word(io.local(), layout.release_word(b, peer)));
        if (released > io.load_private(due)) io.store_private(due, released);
      }
    }
  }
  io.sync();
}

// ---- phases ----

// Before writing into a peer's buffer again: wait until the peer has released every use of the buffer it took
// part in (release_due), even when the caller has masked it since, so nothing a live peer may still read is
// overwritten. A peer a wait gave up on (kMaskedByWait), or that does not release in time (dead, frozen, or
// masking this rank), is masked by the wait and not waited for again. With kRecord the use is then recorded:
// each peer unmasked now takes part in it and owes its release. The zero-copy staging's early acquire waits
// without recording; the send half that follows records (once).
template <class Io, bool kRecord>
class LowLatencyAcquireRole {
 public:
  FERRY_HD LowLatencyAcquireRole(Io&, const LowLatencyContext& ctx, RoleSlice slice)
      : ctx_(ctx), slice_(slice) {}

  FERRY_HD StepResult step(Io& io) {
    StepResult result = low_latency_result(Stage::low_latency_acquire);
    const int R = ctx_.num_ranks();
    while (cursor_ < R) {
      const int peer = rotated(cursor_, R, ctx_.rank);
      if (!slice_.owns(peer) || peer == ctx_.rank) {
        ++cursor_;
        continue;
      }
      // The private word first: every thread reads it before the leader may store it below.
      std::uint64_t* due_word = counter_word(io.local(), ctx_.layout.release_due_word(ctx_.buffer, peer));
      const std::uint64_t due = io.load_private(due_word);
      const std::uint64_t released = io.load_acquire(
          counter_word(io.local(), ctx_.layout.release_word(ctx_.buffer, peer)), ctx_.reach(peer));
      if (released < due) {
        // One a wait gave up on owes nothing; one the caller masked may still be reading: wait for it.
        const bool given_up = io.load_acquire(ctx_.mask + peer, Reach::self) == kMaskedByWait ||
                              stop_waiting_for(io, ctx_, peer, clock_.waited(io));
        if (!given_up) {
          result.wait = word_wait(peer, released, due);
          return result;
        }
        // Masked by a wait from now on (also over the caller's mask), so no later acquire waits for it again.
        // What it owes stays owed: a peer that comes back after a clean must still release it.
        mask_peer(io, ctx_, peer);
      }
      const std::uint64_t owed = due + (kRecord && !is_masked_now(io, ctx_, peer) ? 1 : 0);
      io.sync();
      if (io.leader() && owed != due) io.store_private(due_word, owed);
      io.sync();
      ++cursor_;
      clock_.reset();
      result.progressed = true;
    }
    result.done = true;
    return result;
  }

 private:
  LowLatencyContext ctx_;
  RoleSlice slice_;
  int cursor_ = 0;
  WaitClock clock_;
};

template <class Io>
using LowLatencyAcquire = LowLatencyAcquireRole<Io, true>;
template <class Io>
using LowLatencyAcquireWait = LowLatencyAcquireRole<Io, false>;

// Each of this rank's tokens, once as a message in its scratch slot (cast to fp8 or copied), then into every
// destination: a same-node expert's slot directly, another node's through the staging slot its publish puts.
template <class Io>
class LowLatencyDispatchScatter {
 public:
  FERRY_HD LowLatencyDispatchScatter(Io&, const LowLatencyDispatchPlan& plan, RoleSlice slice)
      : plan_(plan), slice_(slice) {}

  FERRY_HD StepResult step(Io& io) {
    StepResult result = low_latency_result(Stage::low_latency_dispatch_send);
    const LowLatencyContext& ctx = plan_.ctx;
    while (token_ < plan_.num_tokens && !slice_.owns(static_cast<int>(token_))) ++token_;
    if (token_ >= plan_.num_tokens) {
      result.done = true;
      return result;
    }
    const std::int64_t t = token_++;
    const std::int64_t* ids = plan_.topk_idx + t * plan_.num_topk;
    const std::int32_t* slots = plan_.slot + t * plan_.num_topk;
    bool wanted = false;
    for (int k = 0; k < plan_.num_topk; ++k)
      wanted = wanted || (slots[k] >= 0 && !is_masked(io, ctx, ctx.rank_of_expert(ids[k])));
    result.progressed = true;
    if (!wanted) return result;

    const LowLatencyMessage& message = plan_.message;
    const std::size_t stride = message.stride;
    std::byte* scratch = io.local() + ctx.layout.token_scratch(ctx.buffer, t, stride);
    LowLatencyHeader header{};
    header.source_token = static_cast<std::int32_t>(t);
    header.tag = plan_.tag;
    header.source_rank = ctx.rank;
    header.shape_check = plan_.shape_check;
    io.store(reinterpret_cast<LowLatencyHeader*>(scratch), header);
    const std::uint16_t* row = plan_.x + t * message.hidden;
    if (message.fp8) {
      QuantizeRow job;
      job.x = row;
      job.hidden = message.hidden;
      job.round_scale = plan_.round_scale;
      job.out = reinterpret_cast<std::uint8_t*>(scratch + message.payload);
      job.scales = reinterpret_cast<float*>(scratch + message.scales);
      io.quantize(job);
    } else {
      io.copy(scratch + message.payload, row, message.row_bytes());
    }
    io.sync();  // the whole message is written before any thread copies it
    for (int k = 0; k < plan_.num_topk; ++k) {
      if (slots[k] < 0) continue;
      const std::int64_t expert = ids[k];
      const int peer = ctx.rank_of_expert(expert);
      if (is_masked(io, ctx, peer)) continue;
      const Reach reach = ctx.reach(peer);
      if (reach == Reach::fabric) {
        io.copy(io.local() + ctx.layout.dispatch_staging(ctx.buffer, expert, slots[k], stride), scratch,
                stride);
        count_path(io, reach, 1, stride);
      } else {
        // The receiver copies the row from this rank's scratch: the slot only says which token.
        std::byte* slot =
            region_of(io, ctx, peer) +
            ctx.layout.dispatch_slot(ctx.buffer, expert % ctx.local_experts(), ctx.rank, slots[k], stride);
        io.store(reinterpret_cast<LowLatencyHeader*>(slot), header);
        count_path(io, reach, 1, sizeof(header));
      }
    }
    return result;
  }

 private:
  LowLatencyDispatchPlan plan_;
  RoleSlice slice_;
  std::int64_t token_ = 0;
};

// Per destination rank, after the rows: each expert's staged rows (another node), the counts, the arrival
// (publish_to_peers). Within the node the rows are already there.
template <class Io>
class LowLatencyDispatchPublish {
 public:
  FERRY_HD LowLatencyDispatchPublish(Io&, const LowLatencyDispatchPlan& plan, RoleSlice slice)
      : plan_(plan), slice_(slice) {}

  FERRY_HD StepResult step(Io& io) {
    StepResult result = low_latency_result(Stage::low_latency_dispatch_send);
    const LowLatencyContext& ctx = plan_.ctx;
    const std::size_t stride = plan_.message.stride;
    publish_to_peers(io, ctx, slice_, plan_.tag, [&](int peer, std::int64_t le) {
      const std::int64_t expert = static_cast<std::int64_t>(peer) * ctx.local_experts() + le;
      const std::int32_t count = plan_.send_count[expert];
      PublishedBlock block;
      block.staged = ctx.layout.dispatch_staging(ctx.buffer, expert, 0, stride);
      block.slot = ctx.layout.dispatch_slot(ctx.buffer, le, ctx.rank, 0, stride);
      block.bytes = static_cast<std::size_t>(count) * stride;
      block.count = low_latency_signal(plan_.tag, count);
      return block;
    });
    result.progressed = true;
    result.done = true;
    return result;
  }

 private:
  LowLatencyDispatchPlan plan_;
  RoleSlice slice_;
};

// For every local expert, every source in rank order: wait for the source's arrival (once per source, at the
// first expert), read its count for the expert, then copy its rows into the packed output after the previous
// sources' (rows, scales, source tokens, the block's range).
template <class Io>
class LowLatencyDispatchGather {
 public:
  FERRY_HD LowLatencyDispatchGather(Io&, const LowLatencyDispatchPlan& plan, RoleSlice slice)
      : plan_(plan), slice_(slice) {}

  FERRY_HD StepResult step(Io& io) {
    StepResult result = low_latency_result(Stage::low_latency_dispatch_receive);
    const LowLatencyContext& ctx = plan_.ctx;
    const std::int64_t L = ctx.local_experts();
    const int R = ctx.num_ranks();
    while (true) {
      while (expert_ < L && !slice_.owns(static_cast<int>(expert_))) ++expert_;
      if (expert_ >= L) {
        result.done = true;
        return result;
      }
      if (source_ == R) {
        io.store(plan_.recv_count + expert_, static_cast<std::int32_t>(begin_));
        ++expert_;
        source_ = 0;
        begin_ = 0;
        result.progressed = true;
        continue;
      }
      const int source = source_;
      const std::size_t index = static_cast<std::size_t>(expert_ * R + source);
      if (is_masked_now(io, ctx, source)) {
        io.store(plan_.layout_range + index, pack_range(begin_, 0));
        ++source_;
        continue;
      }
      const Arrival arrival = arrival_of(io, ctx, source, plan_.tag);
      if (!arrival.in) {
        const std::uint64_t waited = clock_.waited(io);
        if (!stop_waiting_for(io, ctx, source, waited)) {
          result.wait = word_wait(source, 0, 1);
          return result;
        }
        mask_peer(io, ctx, source);
        finish_source(io, index, waited, 0);
        result.progressed = true;
        continue;
      }
      const std::uint64_t waited = clock_.since == 0 ? 0 : clock_.waited(io);
      const PublishedCount published = published_count(io, ctx, source, expert_, plan_.tag);
      const std::int64_t count = published.count;
      result.fault = arrival.fault.any() ? arrival.fault : published.fault;
      if (!result.fault.any() && count > ctx.layout.T())
        result.fault = low_latency_fault(FaultKind::too_many, source, count, ctx.layout.T());
      if (result.fault.any()) return result;
      for (std::int64_t i = 0; i < count; ++i) {
        const Fault fault = take_row(io, source, i);
        if (fault.any()) {
          result.fault = fault;
          return result;
        }
      }
      io.sync();
      finish_source(io, index, waited, count);
      result.progressed = true;
    }
  }

 private:
  template <class IoT>
  FERRY_HD void finish_source(IoT& io, std::size_t index, std::uint64_t waited, std::int64_t count) {
    io.store(plan_.layout_range + index, pack_range(begin_, count));
    io.store(plan_.wait_ns + index, static_cast<std::int64_t>(waited));
    begin_ += count;
    ++source_;
    clock_.reset();
  }

  // Row i of `source`'s block for the current expert, into packed row begin_ + i.
  FERRY_HD Fault take_row(Io& io, int source, std::int64_t i) {
    const LowLatencyContext& ctx = plan_.ctx;
    const LowLatencyMessage& message = plan_.message;
    const std::byte* slot =
        io.local() + ctx.layout.dispatch_slot(ctx.buffer, expert_, source, i, message.stride);
    LowLatencyHeader header;
    std::memcpy(&header, slot, sizeof(header));
    if (header.tag != plan_.tag)
      return low_latency_fault(FaultKind::wrong_operation, source, header.tag, plan_.tag);
    if (header.source_rank != source)
      return low_latency_fault(FaultKind::wrong_source, source, header.source_rank, source);
    if (header.shape_check != plan_.shape_check)
      return low_latency_fault(FaultKind::wrong_settings, source, header.shape_check, plan_.shape_check);
    if (header.source_token < 0 || header.source_token >= ctx.layout.T())
      return low_latency_fault(FaultKind::wrong_token, source, header.source_token, ctx.layout.T());
    // Across nodes the whole message is in the slot; within the node it is in the sender's scratch.
    const std::byte* from =
        ctx.reach(source) == Reach::fabric
            ? slot
            : region_of(io, ctx, source) +
                  ctx.layout.token_scratch(ctx.buffer, header.source_token, message.stride);
    const std::int64_t rows = ctx.layout.shape.rows_per_expert();
    const std::int64_t row = begin_ + i;
    io.copy(plan_.recv_x + static_cast<std::size_t>(expert_ * rows + row) * message.row_bytes(),
            from + message.payload, message.row_bytes());
    io.store(plan_.recv_src_info + expert_ * rows + row, header.source_token);
    if (message.fp8 && io.leader()) {
      const std::int64_t blocks = scale_blocks(message.hidden);
      const float* scales = reinterpret_cast<const float*>(from + message.scales);
      for (std::int64_t b = 0; b < blocks; ++b) {
        if (plan_.ue8m0) {
          plan_.recv_scales_ue8m0[ue8m0_index(expert_, row, b, rows, blocks)] = ue8m0_of(scales[b]);
        } else {
          plan_.recv_scales[scale_index(expert_, row, b, rows, blocks)] = scales[b];
        }
      }
    }
    return {};
  }

  LowLatencyDispatchPlan plan_;
  RoleSlice slice_;
  std::int64_t expert_ = 0;
  int source_ = 0;
  std::int64_t begin_ = 0;
  WaitClock clock_;
};

// After the receives: take this operation's arrival from every peer whose arrival is in (every peer the
// receive read from, whether masked since or not; one of another operation stays for its own), then tell
// every unmasked sender this buffer is free again (its next use may write into it). Leader work only: no
// group-wide step depends on a mask the caller may change meanwhile.
template <class Io>
class LowLatencyRelease {
 public:
  FERRY_HD LowLatencyRelease(Io&, const LowLatencyContext& ctx, RoleSlice slice) : ctx_(ctx), slice_(slice) {}

  FERRY_HD StepResult step(Io& io) {
    StepResult result = low_latency_result(Stage::low_latency_release);
    const int R = ctx_.num_ranks();
    io.sync();
    for (int i = 0; i < R; ++i) {
      const int peer = rotated(i, R, ctx_.rank);
      if (!slice_.owns(peer) || !io.leader()) continue;
      std::uint64_t* seen = counter_word(io.local(), ctx_.layout.arrival_seen_word(ctx_.buffer, peer));
      const std::uint64_t arrived =
          io.load_private(counter_word(io.local(), ctx_.layout.arrival_word(ctx_.buffer, peer)));
      const std::uint64_t delta = arrived - io.load_private(seen);
      if (delta == low_latency_signal(low_latency_tag(ctx_.operation, false), 0) ||
          delta == low_latency_signal(low_latency_tag(ctx_.operation, true), 0))
        io.store_private(seen, arrived);
      if (peer != ctx_.rank && !is_masked(io, ctx_, peer))
        add_to_word(io, ctx_, peer, ctx_.layout.release_word(ctx_.buffer, ctx_.rank), 1);
    }
    result.progressed = true;
    result.done = true;
    return result;
  }

 private:
  LowLatencyContext ctx_;
  RoleSlice slice_;
};

// Combine's send half, first part: for each (local expert, source rank) block of rows this rank received, the
// expert's results into this rank's staging (already there with zero copy): across nodes they are put from
// there (LowLatencyCombinePublish), within the node the source reads them there.
template <class Io>
class LowLatencyCombineReturn {
 public:
  FERRY_HD LowLatencyCombineReturn(Io&, const LowLatencyCombinePlan& plan, RoleSlice slice)
      : plan_(plan), slice_(slice) {}

  FERRY_HD StepResult step(Io& io) {
    StepResult result = low_latency_result(Stage::low_latency_combine_send);
    const LowLatencyContext& ctx = plan_.ctx;
    const int R = ctx.num_ranks();
    const std::int64_t L = ctx.local_experts();
    const std::int64_t items = L * R;
    while (item_ < items && !slice_.owns(static_cast<int>(item_))) ++item_;
    if (item_ >= items) {
      result.done = true;
      return result;
    }
    // Destinations from the rank after this one, so ranks do not all start with rank 0.
    const std::int64_t local_expert = item_ / R;
    const int peer = static_cast<int>((item_ % R + ctx.rank + 1) % R);
    ++item_;
    result.progressed = true;
    if (is_masked(io, ctx, peer)) return result;
    const std::int64_t range = plan_.layout_range[local_expert * R + peer];
    const std::int64_t begin = range_begin(range);
    const std::int64_t count = range_count(range);
    const std::size_t bytes = static_cast<std::size_t>(count) * ctx.layout.combine_row;
    const std::uint16_t* rows =
        plan_.x + static_cast<std::size_t>(local_expert * ctx.layout.shape.rows_per_expert() + begin) *
                      static_cast<std::size_t>(ctx.layout.shape.hidden);
    if (count > 0 && !plan_.zero_copy)
      io.copy(io.local() + ctx.layout.combine_staging(ctx.buffer, local_expert, begin), rows, bytes);
    count_path(io, ctx.reach(peer), static_cast<std::uint64_t>(count), bytes);
    return result;
  }

 private:
  LowLatencyCombinePlan plan_;
  RoleSlice slice_;
  std::int64_t item_ = 0;
};

// Combine's send half, second part, per source rank: each local expert's staged rows into the source's slots
// (global expert, positions 0..count; another node), the counts (within the node with where the rows begin in
// the staging), the arrival (publish_to_peers).
template <class Io>
class LowLatencyCombinePublish {
 public:
  FERRY_HD LowLatencyCombinePublish(Io&, const LowLatencyCombinePlan& plan, RoleSlice slice)
      : plan_(plan), slice_(slice) {}

  FERRY_HD StepResult step(Io& io) {
    StepResult result = low_latency_result(Stage::low_latency_combine_send);
    const LowLatencyContext& ctx = plan_.ctx;
    publish_to_peers(io, ctx, slice_, plan_.tag, [&](int peer, std::int64_t le) {
      const std::int64_t range = plan_.layout_range[le * ctx.num_ranks() + peer];
      const std::int64_t count = range_count(range);
      PublishedBlock block;
      block.staged = ctx.layout.combine_staging(ctx.buffer, le, range_begin(range));
      block.slot = ctx.layout.combine_slot(ctx.buffer,
                                           static_cast<std::int64_t>(ctx.rank) * ctx.local_experts() + le, 0);
      block.bytes = static_cast<std::size_t>(count) * ctx.layout.combine_row;
      block.count = low_latency_signal(plan_.tag, count);
      if (ctx.reach(peer) != Reach::fabric) block.count = with_begin(block.count, range_begin(range));
      return block;
    });
    result.progressed = true;
    result.done = true;
    return result;
  }

 private:
  LowLatencyCombinePlan plan_;
  RoleSlice slice_;
};

// Combine's receive, first part: every expert's count, once its rank's arrival is in (its rows for this
// rank's tokens are in too). An expert rank that returns fewer rows than it was sent had skipped this rank in
// the dispatch: it is masked too.
template <class Io>
class LowLatencyCombineWait {
 public:
  FERRY_HD LowLatencyCombineWait(Io&, const LowLatencyCombinePlan& plan, RoleSlice slice)
      : plan_(plan), slice_(slice) {}

  FERRY_HD StepResult step(Io& io) {
    StepResult result = low_latency_result(Stage::low_latency_combine_receive);
    const LowLatencyContext& ctx = plan_.ctx;
    const std::int64_t E = ctx.layout.E();
    while (true) {
      while (expert_ < E && !slice_.owns(static_cast<int>(expert_))) ++expert_;
      if (expert_ >= E) {
        result.done = true;
        return result;
      }
      const int peer = ctx.rank_of_expert(expert_);
      if (is_masked_now(io, ctx, peer)) {
        ++expert_;
        continue;
      }
      const Arrival arrival = arrival_of(io, ctx, peer, plan_.tag);
      if (!arrival.in) {
        const std::uint64_t waited = clock_.waited(io);
        if (!stop_waiting_for(io, ctx, peer, waited)) {
          result.wait = word_wait(peer, 0, 1);
          return result;
        }
        mask_peer(io, ctx, peer);
        io.store(plan_.wait_ns + expert_, static_cast<std::int64_t>(waited));
        next();
        result.progressed = true;
        continue;
      }
      const std::uint64_t waited = clock_.since == 0 ? 0 : clock_.waited(io);
      const PublishedCount published =
          published_count(io, ctx, peer, expert_ % ctx.local_experts(), plan_.tag);
      result.fault = arrival.fault.any() ? arrival.fault : published.fault;
      if (result.fault.any()) return result;
      const std::int64_t count = published.count;
      const std::int64_t begin = published.begin;
      if (ctx.reach(peer) != Reach::fabric && begin + count > ctx.layout.shape.rows_per_expert()) {
        result.fault =
            low_latency_fault(FaultKind::too_many, peer, begin + count, ctx.layout.shape.rows_per_expert());
        return result;
      }
      // Where the expert's rows for this rank are: our slots (across nodes) or its staging (within the node).
      io.store(plan_.row_base + expert_,
               static_cast<std::int64_t>(
                   ctx.reach(peer) == Reach::fabric
                       ? ctx.layout.combine_slot(ctx.buffer, expert_, 0)
                       : ctx.layout.combine_staging(ctx.buffer, expert_ % ctx.local_experts(), begin)));
      if (count != plan_.send_count[expert_]) mask_peer(io, ctx, peer);
      io.store(plan_.wait_ns + expert_, static_cast<std::int64_t>(waited));
      next();
      result.progressed = true;
    }
  }

 private:
  FERRY_HD void next() {
    ++expert_;
    clock_.reset();
  }

  LowLatencyCombinePlan plan_;
  RoleSlice slice_;
  std::int64_t expert_ = 0;
  WaitClock clock_;
};

// Combine's receive, second part: each token's rows weighted and summed in topk order (rows of masked ranks
// left out; a token with none is zero).
template <class Io>
class LowLatencyCombineReduce {
 public:
  FERRY_HD LowLatencyCombineReduce(Io&, const LowLatencyCombinePlan& plan, RoleSlice slice)
      : plan_(plan), slice_(slice) {}

  FERRY_HD StepResult step(Io& io) {
    StepResult result = low_latency_result(Stage::low_latency_combine_receive);
    const LowLatencyContext& ctx = plan_.ctx;
    while (token_ < plan_.num_tokens && !slice_.owns(static_cast<int>(token_))) ++token_;
    if (token_ >= plan_.num_tokens) {
      result.done = true;
      return result;
    }
    const std::int64_t t = token_++;
    WeightedRows job;
    job.hidden = ctx.layout.shape.hidden;
    job.out = plan_.out + t * job.hidden;
    for (int k = 0; k < plan_.num_topk; ++k) {
      const std::size_t i = static_cast<std::size_t>(t * plan_.num_topk + k);
      const std::int32_t position = plan_.slot[i];
      if (position < 0) continue;
      const std::int64_t expert = plan_.topk_idx[i];
      const int peer = ctx.rank_of_expert(expert);
      if (is_masked(io, ctx, peer)) continue;
      const std::byte* base =
          (ctx.reach(peer) == Reach::fabric ? io.local() : region_of(io, ctx, peer)) + plan_.row_base[expert];
      job.rows[job.count] = reinterpret_cast<const std::uint16_t*>(base + static_cast<std::size_t>(position) *
                                                                              ctx.layout.combine_row);
      job.weights[job.count] = plan_.topk_weights[i];
      ++job.count;
    }
    io.weighted_sum(job);
    result.progressed = true;
    return result;
  }

 private:
  LowLatencyCombinePlan plan_;
  RoleSlice slice_;
  std::int64_t token_ = 0;
};

// clean_low_latency_buffer's barrier: this rank's epoch into every peer's sync word (within the node stored;
// across nodes added as the difference from what this rank last told that peer, so a barrier missed while a
// peer was masked never leaves it behind for good), then every peer's epoch awaited; silent peers masked.
template <class Io>
class LowLatencyBarrier {
 public:
  FERRY_HD LowLatencyBarrier(Io&, const LowLatencyContext& ctx, std::uint64_t epoch)
      : ctx_(ctx), epoch_(epoch) {}

  FERRY_HD StepResult step(Io& io) {
    StepResult result = low_latency_result(Stage::low_latency_barrier);
    const int R = ctx_.num_ranks();
    const std::size_t mine = ctx_.layout.sync_word(ctx_.rank);
    if (!announced_) {
      io.sync();
      if (io.leader()) {
        for (int i = 0; i < R; ++i) {
          const int peer = rotated(i, R, ctx_.rank);
          if (peer == ctx_.rank || is_masked(io, ctx_, peer)) continue;
          const Reach reach = ctx_.reach(peer);
          if (reach == Reach::fabric) {
            std::uint64_t* told = counter_word(io.local(), ctx_.layout.sync_sent_word(peer));
            const std::uint64_t before = io.load_private(told);
            if (epoch_ > before) io.signal(peer, mine, epoch_ - before);
            io.store_private(told, epoch_);
            io.traffic().fabric_signals += 1;
          } else {
            io.store_release(counter_word(region_of(io, ctx_, peer), mine), epoch_, reach);
          }
        }
      }
      announced_ = true;
      result.progressed = true;
    }
    while (cursor_ < R) {
      const int peer = rotated(cursor_, R, ctx_.rank);
      if (peer == ctx_.rank || is_masked_now(io, ctx_, peer)) {
        ++cursor_;
        continue;
      }
      const std::uint64_t seen =
          io.load_acquire(counter_word(io.local(), ctx_.layout.sync_word(peer)), ctx_.reach(peer));
      if (seen >= epoch_ || stop_waiting_for(io, ctx_, peer, clock_.waited(io))) {
        if (seen < epoch_) mask_peer(io, ctx_, peer);
        ++cursor_;
        clock_.reset();
        result.progressed = true;
        continue;
      }
      result.wait = word_wait(peer, seen, epoch_);
      return result;
    }
    result.done = true;
    return result;
  }

 private:
  LowLatencyContext ctx_;
  std::uint64_t epoch_;
  bool announced_ = false;
  int cursor_ = 0;
  WaitClock clock_;
};

}  // namespace ferry::kernels::protocol
