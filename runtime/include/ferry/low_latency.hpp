// ferry::LowLatencyBuffer — the low-latency (decode) mode: DeepEP's low_latency_dispatch /
// low_latency_combine.
//
//   std::size_t bytes = ferry::get_low_latency_rdma_size_hint(128, 7168, group.world_size(), 256);
//   ferry::LowLatencyBuffer buffer(group, {.num_rdma_bytes = bytes});
//   auto sent = buffer.low_latency_dispatch(x, topk_idx, 128, 256, {.use_fp8 = true, .return_recv_hook =
//   true});
//   ...                                   // the sends are out; nothing of ferry's runs or waits meanwhile
//   sent.hook();                          // waits for and takes the receives
//   // sent.recv_x [E/R, R*128, 7168] e4m3, sent.recv_x_scales, sent.recv_count [E/R]: rows [0, count) valid
//   ferry::Tensor y = experts(sent.recv_x, sent.recv_x_scales, sent.recv_count);   // [E/R, R*128, H] bf16
//   auto back = buffer.low_latency_combine(y, topk_idx, topk_weights, sent.handle);
//   // back.combined_x [T, H] bf16: for each token, sum over its topk slots of weight * its expert's row
//
// Each sender puts every (token, expert) row straight into the expert's receive slot at the expert's rank
// (no forwarding, no count exchange first; slots exist for the worst case), then one word per (expert,
// sender) carrying the count. Received rows are packed per local expert by (source rank, source token), so
// results do not depend on timing; combine returns each row to its source token, which sums its rows with its
// topk weights in topk order (fp32, each product and sum rounded on its own, then bf16).
//
// Calls are collective (every rank issues the same sequence with the same shape). Two buffers alternate: an
// operation uses buffer n % 2 of this rank's operations since the last clean, so at most two results can be
// outstanding; issuing a third while the oldest's receive hook has not run is refused by name.
//
// The hook: with return_recv_hook the call issues the sends and returns; hook() waits for and takes the
// receives. Between the two nothing of ferry's runs for the operation. async_finish runs the whole operation
// on the buffer's own thread and completes `event`; with neither, the call returns when the results are
// there.
//
// Masking: a rank that stays silent for `timeout` (dead, or masked by the caller with
// low_latency_update_mask_buffer) is skipped by this rank from then on: its rows are left out of the
// dispatch's counts and of the combined sums (a token whose experts are all masked gets zeros), and the mask
// says who was skipped. Decoding goes on. A rank unmasked again needs clean_low_latency_buffer (collective)
// before it takes part. A rank that dies (its process is gone), on this node or another, is masked by every
// survivor within moments, not after the timeout: the job's store names it to all of them (Group's
// StoreWatch), and the fabric gives up on it alone (ucx; over verbs a dead rank of another node still fails
// the operation by name, Errc::peer_failure). On a sub-group (Group::split) the same, through a watch of the
// sub-group's own (Group::member_watch). The job's rank 0 counts as dead once the store it hosts is gone. A
// rank that is only frozen is masked after the timeout. Under
// `ferry launch`, pass --keep-going so that the launcher does not stop the survivors when a rank dies.
//
// On the GPU, LowLatencyBuffer(group, config, Device::cuda): x, topk_idx, topk_weights, out and the results
// are device tensors of this rank's GPU (local rank % visible GPUs), run by the CUDA executor of the mode
// (kernels/cuda/low_latency_engine.hpp). Each half runs on the buffer's own stream after the work the
// caller's stream (the options' `stream`) has enqueued, and the caller's stream then waits for it: results
// are ready in that stream's order, and the call itself does not wait for the GPU. With a hook the caller's
// stream waits for the send half, and hook() enqueues the receive half the same way, for the same stream.
// async_finish: the caller's stream does not wait; order it after `event` (Event::stream_wait) or wait on the
// host. Every call's `event` (a hook call's: its send half) completes when its work has run; its wait()
// waits until the buffer's stream is idle and raises what the kernels recorded (a bad expert id, a phase
// that stopped moving), which a call issued while that stream is idle raises too; from then on every call
// fails until clean_low_latency_buffer. Calls on one buffer come from one thread at a time. Keep x, topk_idx
// and topk_weights allocated until the caller's stream has passed the call (async_finish: until the event).
// The per-call statistics tensors are device tensors there too, added into by a kernel after the receive
// half (keep them allocated as the inputs).
// CUDA graphs: a dispatch and its combine called with a stream being captured (any capture mode) go into the
// graph, which may then be launched any number of times, every rank alike (each launch is the next
// operations, numbered on the GPU). Their results are the tensors the calls returned, written again at each
// launch; the inputs are read from the same addresses at each launch. A captured call's memory is its own
// (not the cache's) and goes once the graph and its instances are destroyed and its results dropped. In a
// capture: no async_finish; a hook is called in the same capture; the combine of a captured dispatch is
// captured with it; the returned Event is already complete (order after the graph launch instead). While a
// capture that the buffer's stream joined is open, a call from a stream outside it, the mask calls, clean and
// waits for earlier Events are refused by name (they would land in the graph, or synchronise a capturing
// stream). Launch a graph only when no hook of this buffer is pending, and not after a
// clean_low_latency_buffer that came after its capture (the clean starts the count again), on a stream
// ordered with the buffer's other calls, and let it finish before clean_low_latency_buffer or the buffer's
// destruction (those order the buffer's own stream, which a launch does not use). A failure inside a launch
// is raised by the next call. With ranks that are threads of one process, capture in thread-local or relaxed
// mode (a global-mode capture forbids the other ranks' calls meanwhile). Zero copy:
// get_next_low_latency_combine_buffer takes the caller's stream and enqueues its wait. Not on the GPU yet:
// low_latency_stats counts operations only (its vectors are empty). A death the store reports reaches kernels
// already running by their timeout (later operations at once), and the fabric does not give up on a dead rank
// alone. mask_status stays a host tensor.
//
// Statistics for serving: per-local-expert cumulative receive counts, and the time this rank waited for each
// source rank's rows (dispatch and combine), cumulative (low_latency_stats) or added into the caller's
// tensors per call (DeepEP's cumulative_local_expert_recv_stats / *_wait_recv_cost_stats).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "ferry/buffer.hpp"
#include "ferry/core/deadline.hpp"
#include "ferry/group.hpp"
#include "ferry/tensor.hpp"

namespace ferry {

// Registered bytes one rank needs for dispatches of up to num_max_dispatch_tokens_per_rank tokens of `hidden`
// values to `num_experts` experts over `num_ranks` ranks (sized for bf16 rows, the larger format, as
// DeepEP's).
std::size_t get_low_latency_rdma_size_hint(std::int64_t num_max_dispatch_tokens_per_rank, std::int64_t hidden,
                                           int num_ranks, std::int64_t num_experts);

struct LowLatencyConfig {
  std::size_t num_rdma_bytes = 0;      // registered bytes per rank (get_low_latency_rdma_size_hint); > 0
  Duration timeout = kDefaultTimeout;  // a rank silent this long is masked
  // Tests of the GPU's execution model on the CPU: > 1 runs every phase as two role instances, each by this
  // many threads sharing its state as a group of warps does (Config::host_lanes' twin).
  int host_lanes = 1;
};

class LowLatencyBuffer;

namespace detail {
struct LowLatencyRecord;
struct LowLatencyReceive;
}  // namespace detail

// What a dispatch leaves for its combine (DeepEP's handle: src_info, layout_range, max tokens, hidden,
// experts).
class LowLatencyHandle {
 public:
  LowLatencyHandle() = default;
  bool valid() const { return record_ != nullptr; }
  std::int64_t num_max_dispatch_tokens_per_rank() const;
  std::int64_t hidden() const;
  std::int64_t num_experts() const;
  std::int64_t num_tokens() const;  // T of this rank's dispatch
  int num_topk() const;
  // Source token of every packed row: int32 [E/R, R*T] (rows past recv_count are -1).
  const Tensor& packed_recv_src_info() const;
  // Per (local expert, source rank): int64 [E/R, R], (begin << 32) | count of the block in the packed rows.
  const Tensor& packed_recv_layout_range() const;

 private:
  friend class LowLatencyBuffer;
  std::shared_ptr<detail::LowLatencyRecord> record_;
};

// Takes the receives of an operation issued with return_recv_hook. Call it once; the results are valid after.
class LowLatencyHook {
 public:
  LowLatencyHook() = default;
  bool valid() const { return receive_ != nullptr; }
  void operator()() const;  // throws the operation's error; invalid_argument when called twice or empty

 private:
  friend class LowLatencyBuffer;
  std::shared_ptr<detail::LowLatencyReceive> receive_;
};

struct LowLatencyDispatchOptions {
  bool use_fp8 = true;       // e4m3 rows with per-128-channel scales (hidden a multiple of 128), else bf16
  bool round_scale = false;  // power-of-two scales
  bool use_ue8m0 = false;    // scales as UE8M0 bytes, four per int32 (needs round_scale)
  bool async_finish = false;
  bool return_recv_hook = false;  // not with async_finish
  // Optional, added into per call (on the buffer's device): int32 [E/R] rows received per local expert;
  // int64 [R] nanoseconds this rank waited for each source rank's rows.
  TensorView cumulative_local_expert_recv_stats;
  TensorView dispatch_wait_recv_cost_stats;
  // Device::cuda: the caller's cudaStream_t (nullptr: the legacy default stream); ignored on the host.
  void* stream = nullptr;
};

struct LowLatencyDispatchResult {
  // [E/R, R*T, H] e4m3 (use_fp8) or bf16; expert e's rows [0, recv_count[e]) are valid, packed by (source
  // rank, source token).
  Tensor recv_x;
  // use_fp8: fp32 [E/R, H/128, R*T], or with use_ue8m0 int32 [E/R, ceil(H/512), R*T] (byte j of word p is
  // block 4p + j). DeepEP's layout: transposed per expert, so a row's scales are a column (present it as
  // [E/R, R*T, H/128] with strides (H/128 * R*T, 1, R*T)). Empty for bf16.
  Tensor recv_x_scales;
  Tensor recv_count;  // int32 [E/R]
  LowLatencyHandle handle;
  Event event;          // async_finish: completes when the results are there; otherwise already complete
  LowLatencyHook hook;  // return_recv_hook: takes the receives
};

struct LowLatencyCombineOptions {
  bool zero_copy = false;  // x is get_next_low_latency_combine_buffer(handle), already filled
  bool async_finish = false;
  bool return_recv_hook = false;
  TensorView out;                           // [T, H] bf16: written instead of a new tensor
  TensorView combine_wait_recv_cost_stats;  // int64 [R], added into per call (nanoseconds)
  void* stream = nullptr;                   // Device::cuda: the caller's cudaStream_t; ignored on the host
};

struct LowLatencyCombineResult {
  Tensor combined_x;  // [T, H] bf16; empty when options.out was given (the result is written there)
  Event event;
  LowLatencyHook hook;
};

// Cumulative since the buffer was built.
struct LowLatencyStats {
  std::vector<std::int64_t> local_expert_recv;  // [E/R] rows received per local expert (last shape's E)
  std::vector<std::int64_t> dispatch_wait_ns;   // [R] waited for each source rank's dispatch rows
  std::vector<std::int64_t> combine_wait_ns;    // [R] waited for each expert rank's combine rows
  std::uint64_t operations = 0;
  // This rank's commands to other nodes so far: puts (a block of one expert's rows, a block of counts) and
  // atomics (one arrival per peer and operation, releases, clean's barriers).
  std::uint64_t fabric_puts = 0;
  std::uint64_t fabric_signals = 0;
};

class LowLatencyBuffer {
 public:
  // One rank of a multi-process job; collective. The region lives in shared memory mapped by the node's
  // ranks (Device::cuda: in device memory, shared through CUDA IPC); other nodes are reached through the
  // proxy and a fabric (FERRY_FABRIC), as Buffer's.
  LowLatencyBuffer(Group& group, const LowLatencyConfig& config, Device device = Device::host);
  // One rank of an in-process cluster (every rank must use the same config).
  LowLatencyBuffer(LocalCluster& cluster, int rank, const LowLatencyConfig& config);
  ~LowLatencyBuffer();  // waits for operations already issued
  LowLatencyBuffer(const LowLatencyBuffer&) = delete;
  LowLatencyBuffer& operator=(const LowLatencyBuffer&) = delete;

  int rank() const;
  int num_ranks() const;
  std::size_t num_rdma_bytes() const;

  // x: [T, H] bf16, T <= num_max_dispatch_tokens_per_rank; topk_idx: [T, K] int64 in [0, num_experts) or -1.
  // Checks everything before any communication (Errc::invalid_argument naming the problem).
  LowLatencyDispatchResult low_latency_dispatch(const TensorView& x, const TensorView& topk_idx,
                                                std::int64_t num_max_dispatch_tokens_per_rank,
                                                std::int64_t num_experts,
                                                const LowLatencyDispatchOptions& options = {});
  // x: [E/R, R*T, H] bf16, the experts' rows for the dispatch's packed rows; topk_idx: the dispatch's;
  // topk_weights: [T, K] fp32.
  LowLatencyCombineResult low_latency_combine(const TensorView& x, const TensorView& topk_idx,
                                              const TensorView& topk_weights, const LowLatencyHandle& handle,
                                              const LowLatencyCombineOptions& options = {});

  // Collective: a barrier (masked ranks skipped), this rank's copies of its signal words brought up to date
  // (nothing is cleared: words only grow), a barrier; the operation count starts again. Needed after a rank
  // is unmasked, before a new shape is used, and after a failed operation.
  void clean_low_latency_buffer(std::int64_t num_max_dispatch_tokens_per_rank, std::int64_t hidden,
                                std::int64_t num_experts);
  // The bf16 [E/R, R*T, H] staging the next combine sends from: fill it and combine with zero_copy, with no
  // other operation of this buffer in between. Valid while the buffer lives; returns once every peer has
  // released that buffer's previous use. Device::cuda: a view of device memory, and the wait is enqueued
  // instead: `stream` (the caller's cudaStream_t, which writes the staging) waits for it; pass the combine
  // that stream too (or one ordered after the writes). Refused inside a CUDA graph capture, and after one
  // until clean_low_latency_buffer.
  TensorView get_next_low_latency_combine_buffer(const LowLatencyHandle& handle, void* stream = nullptr);

  void low_latency_update_mask_buffer(int rank_to_mask, bool mask = false);
  // int32 [R]: 1 = masked by this rank, or known dead (a dead rank stays 1 after a clean of the mask).
  void low_latency_query_mask_buffer(const TensorView& mask_status) const;
  void low_latency_clean_mask_buffer();

  LowLatencyStats low_latency_stats() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry
