// ferry::Buffer — MoE dispatch and combine for one rank (DeepEP's Buffer, normal mode).
//
//   ferry::Group group = ferry::Group::from_env();              // one process per rank (ferry launch,
//   torchrun...) ferry::Buffer buffer(group, config);                        // or: Buffer(local_cluster,
//   rank), ranks as threads ferry::Layout layout = buffer.get_layout(topk_idx, num_experts); auto dispatched
//   = buffer.dispatch({x, {}, topk_idx, topk_weights}, layout);   // returns at once
//   ...                                                                          // overlap compute here
//   ferry::DispatchResult& got = dispatched.wait();     // recv_x, recv_topk_idx, recv_topk_weights, ...
//   ferry::Tensor y = experts(got.recv_x, got.recv_topk_idx, got.recv_topk_weights);   // weight rows here
//   ferry::Tensor out = buffer.combine(y, got.handle).wait().out;                   // [T, H], summed
//
// Every operation is collective: all ranks issue the same sequence of dispatch / combine calls with the same
// settings. Operations of one Buffer run in issue order on its own threads; each returns a Pending whose
// Event says when it finished and rethrows its error. Inputs are not copied, except topk_idx and the layout,
// which are taken at the call (on a CUDA Buffer: copied on the Buffer's stream, and the caller's stream
// (DispatchOptions::stream) waits for that copy -- and so for whatever was queued on the Buffer's stream before
// it, earlier operations included, but not for this operation's kernels; so work enqueued there after the call
// may change them, and work on another stream must first wait for the caller's): keep x, x_scales,
// topk_weights, y and the combine options' tensors alive and unchanged until the Event completes. After an
// operation fails, the Buffer refuses further operations (its rings are in an unknown state) — except when a
// worst-case-sized dispatch received more rows than it had room for: that dispatch fails alone, and the
// Buffer stays usable. A Buffer is not reset after a failure (its rings could only be reset by all ranks
// together): destroy it and build a new one on every rank. On a CUDA Buffer a failure (a role's timeout or
// fault, a CUDA error) also stops the operations already enqueued behind it: their kernels leave at once and
// their Events fail, quoting the first error.
//
// CUDA Buffers return device tensors from a cache of the Buffer's (freed memory is reused by its next
// operations, in the order of its stream; tensors may outlive the Buffer). Work on another stream that reads
// a returned tensor must be finished, or be on the stream passed to the next operation
// (DispatchOptions::stream), before the last copy of the tensor is dropped: as with a framework's caching
// allocator. Ranks that are threads of one process sharing a GPU must not call synchronising CUDA APIs
// (cudaFree, cudaDeviceSynchronize, cudaMemcpy on the legacy stream...) while an operation is in flight: the
// call waits for the other rank's kernels, which may be waiting for this rank. A CUDA Buffer's operations
// cannot be captured into a CUDA graph (their Events and results are settled on the host): one issued on a
// stream being captured throws Errc::unsupported before enqueueing anything.
//
// Routing follows the Layout: a token goes to the ranks layout.is_token_in_rank names; its expert ids travel
// as data, and a token whose ids disagree with the layout fails the dispatch by name. Compute the layout from
// the topk_idx you dispatch (get_layout), once per routing.
//
// Determinism: received rows are ordered by (source rank, source token); combine sums in fp32 in a fixed
// order (local ranks ascending per node, rounded to the row type, then nodes ascending, starting from the
// bias when one is given), so results are identical bit for bit on every run, whatever num_sms or timing.
// Combine does NOT apply topk weights (as DeepEP): weight the expert outputs before combining them.
//
// Tuning (DeepEP's `config` argument): DispatchOptions::config / CombineOptions::config take a Config whose
// num_sms (up to the Buffer's), rdma_chunk and nvl_chunk apply to that call; a Config can be loaded from a
// file (Config::load, e.g. the one `ferry bench dispatch --sweep` writes):
//
//   ferry::Config tuned = ferry::Config::load("tuned.json");
//   auto got = buffer.dispatch(inputs, layout, {.expert_alignment = 128, .config = tuned}).wait();
//   auto combined = buffer.combine(y, got.handle, {.topk_weights = got.recv_topk_weights, .bias =
//   shared_out})
//                       .wait();          // combined.out [T, H]; combined.topk_weights [T, K]
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <vector>

#include "ferry/config.hpp"
#include "ferry/group.hpp"
#include "ferry/layout.hpp"
#include "ferry/tensor.hpp"

namespace ferry {

namespace kernels::host {
struct DispatchRecord;
}
namespace kernels::cuda {
struct DeviceRecord;
}

// Completion of one operation.
class Event {
 public:
  Event();            // an event that has already completed
  bool test() const;  // finished, successfully or not
  void wait() const;  // blocks until finished; rethrows the operation's error
  // Waits at most `timeout`; true when the operation has finished (wait() then returns or throws at once).
  // For a waiter that must stay responsive meanwhile, e.g. to a signal (the Python binding's Ctrl-C).
  bool wait_for(Duration timeout) const;

  // When the operation was issued, began to run (after the operations issued before it) and finished: what a
  // profiler draws as "communication in flight". Only once test() is true; throws invalid_argument before.
  struct Times {
    std::chrono::steady_clock::time_point issued, started, finished;
  };
  Times times() const;

  // Makes a CUDA stream (cudaStream_t) wait for the operation without blocking the host (DeepEP's
  // current_stream_wait); for an operation of a host Buffer, the host waits instead.
  void stream_wait(void* stream) const;

  struct State;
  explicit Event(std::shared_ptr<State> state);

 private:
  std::shared_ptr<State> state_;
};

// The result of an operation that may still be running.
template <typename T>
class Pending {
 public:
  Pending(Event event, std::shared_ptr<T> value) : event_(std::move(event)), value_(std::move(value)) {}
  const Event& event() const { return event_; }
  bool test() const { return event_.test(); }
  T& wait() {
    event_.wait();
    return *value_;
  }

 private:
  Event event_;
  std::shared_ptr<T> value_;
};

// What a dispatch leaves for combine and for a cached dispatch of the same routing.
class Handle {
 public:
  Handle() = default;
  bool valid() const { return record_ != nullptr || device_record_ != nullptr; }
  std::int64_t num_tokens() const;       // T of this rank's dispatch
  std::int64_t num_recv_tokens() const;  // tokens this rank received
  std::int64_t recv_rows() const {
    return recv_rows_;
  }  // rows of the receive tensors (>= received in worst case)
  // Source rank and source token of every received row (host Buffers; empty for a CUDA Buffer's handle, whose
  // records stay on the GPU).
  std::span<const std::int32_t> recv_src_rank() const;
  std::span<const std::int32_t> recv_src_token() const;

 private:
  friend class Buffer;
  friend class DeviceBackend;
  std::shared_ptr<const kernels::host::DispatchRecord> record_;
  std::shared_ptr<kernels::cuda::DeviceRecord> device_record_;
  std::int64_t num_tokens_ = 0;
  std::int64_t num_recv_ = 0;
  int num_topk_ = 0;
  int channels_ = 0;
  std::int64_t recv_rows_ = 0;
  int rank_ = -1;
  // A worst-case dispatch's: the tokens it received once known to be more than num_worst_tokens (0: not, or
  // not yet known). Shared by every copy of the handle (one may be taken before the dispatch has run), so
  // combine and a cached dispatch refuse them all by name: its rows past num_worst_tokens were dropped.
  std::shared_ptr<std::atomic<std::int64_t>> overflowed_;
};

struct DispatchInputs {
  TensorView x;         // [T, H] bf16, fp32 or fp8_e4m3
  TensorView x_scales;  // [T, ceil(H / 128)] fp32 when x is fp8_e4m3 (one scale per 128 values), else empty
  TensorView topk_idx;  // [T, K] int64, -1 = no expert
  TensorView topk_weights;  // [T, K] fp32
};

struct DispatchResult;
struct CombineResult;

struct DispatchOptions {
  // > 0: size every output for this many rows at the call (worst case), so nothing waits on the host for the
  // counts; rows past num_recv_tokens are zero with recv_topk_idx -1. Receiving more fails this dispatch
  // (Errc::invalid_argument naming the counts); the Buffer stays usable.
  std::int64_t num_worst_tokens = 0;
  // tokens_per_local_expert rounded up to a multiple of this (DeepEP's expert_alignment, e.g. for grouped
  // GEMMs).
  int expert_alignment = 1;
  // Per-call settings: num_sms (even, <= the Buffer's), rdma_chunk, nvl_chunk; the fields that size the
  // buffer must equal the Buffer's. A cached dispatch and a combine run with their dispatch's num_sms.
  std::optional<Config> config;
  // CUDA Buffers: the caller's stream (cudaStream_t); the operation runs on the Buffer's communication stream
  // after the work already enqueued on it (DeepEP's previous_event). nullptr: the default stream.
  void* stream = nullptr;
  // Called once the receive tensors exist, before their rows arrive (where DeepEP's dispatch returns them):
  // a host Buffer calls it on its own thread once the counts are exchanged, or before dispatch() returns
  // when the sizes are known at the call (a cached or worst-case dispatch); a CUDA Buffer before dispatch()
  // returns. recv_x, recv_x_scales, recv_topk_idx and recv_topk_weights have their final shape and memory;
  // their contents, num_recv_tokens, tokens_per_local_expert and the handle are final only when the Event
  // completes. It must neither block nor throw. Not called when the dispatch fails before allocating.
  std::function<void(const DispatchResult&)> on_allocated;
};

struct DispatchResult {
  Tensor recv_x;         // [M, H] x's dtype, rows ordered by (source rank, source token)
  Tensor recv_x_scales;  // [M, ceil(H / 128)] fp32 when x is fp8_e4m3
  Tensor recv_topk_idx;  // [M, K] int64 local expert ids, -1 where the expert lives elsewhere (not cached)
  Tensor recv_topk_weights;  // [M, K] fp32, 0 where recv_topk_idx is -1 (not cached)
  std::vector<std::int64_t>
      tokens_per_local_expert;       // [E / R], each rounded up to expert_alignment (not cached)
  std::int64_t num_recv_tokens = 0;  // valid rows (M unless worst-case sizing)
  Handle handle;
};

struct CombineOptions {
  // [handle.recv_rows(), K] fp32, e.g. the dispatch's recv_topk_weights: summed back along the combine path
  // into CombineResult::topk_weights, which gives every token its topk weights (each slot is non-zero on one
  // rank).
  TensorView topk_weights;
  // [T, H] of y's dtype: added to every output row before it is rounded (DeepEP's bias).
  TensorView bias;
  // Per-call rdma_chunk and nvl_chunk (num_sms must be the dispatch's).
  std::optional<Config> config;
  // CUDA Buffers: the caller's stream, as for dispatch.
  void* stream = nullptr;
  // Called before combine() returns, once the output tensors exist (their contents are final only when the
  // Event completes), as DispatchOptions::on_allocated. It must neither block nor throw.
  std::function<void(const CombineResult&)> on_allocated;
};

struct CombineResult {
  Tensor out;           // [T, H] y's dtype: the bias plus the sum of the rows every receiving rank returned
  Tensor topk_weights;  // [T, K] fp32, when CombineOptions::topk_weights was given
};

// Messages and bytes each path carried (cumulative, updated as operations finish). fabric: crossed nodes
// (dispatch: once per token and remote target node); node: written into another local rank's memory; self:
// stayed in this rank's own rings.
struct PathTraffic {
  std::uint64_t messages = 0;
  std::uint64_t bytes = 0;
};
struct TrafficCounters {
  PathTraffic fabric;
  PathTraffic node;
  PathTraffic self;
  std::uint64_t fabric_puts = 0;
  std::uint64_t fabric_signals = 0;
};
struct BufferTraffic {
  TrafficCounters dispatch;
  TrafficCounters combine;
  TrafficCounters notify;  // control messages before each (non-cached) dispatch
};

// All ranks of an N x L cluster inside one process, each rank's registered buffer in this address space;
// intra- node peer memory is a pointer, an inter-node put a memcpy followed by a signal. One Buffer per rank;
// drive the ranks from one thread (operations are asynchronous) or from several.
class LocalCluster {
 public:
  LocalCluster(int num_nodes, int local_size, const Config& config = {});
  ~LocalCluster();
  LocalCluster(const LocalCluster&) = delete;
  LocalCluster& operator=(const LocalCluster&) = delete;

  int num_nodes() const;
  int local_size() const;
  int num_ranks() const;
  const Config& config() const;

  // Fabric puts of token rows (dispatch and combine data rings) from `source` into `target` so far.
  std::uint64_t fabric_data_puts(int source, int target) const;

  struct Impl;

 private:
  friend class Buffer;
  friend class LowLatencyBuffer;
  std::unique_ptr<Impl> impl_;
};

class Buffer {
 public:
  // One rank of a multi-process job; collective over the group (every rank constructs its Buffer with the
  // same config). The registered buffer lives in shared memory mapped by the node's ranks; ranks on other
  // nodes are reached through a fabric (FERRY_FABRIC=ucx|verbs|auto) driven by a proxy thread. The group must
  // outlive the Buffer; destruction is collective too (it waits for the other ranks before releasing memory).
  // device = Device::cuda: the registered buffer is device memory of GPU (local rank % GPUs), node peers
  // reach it through CUDA IPC, other nodes through the proxy and a fabric that registers device memory (verbs
  // with dma-buf or nvidia-peermem; UCX only when built with CUDA support); tensors are device tensors,
  // operations are kernels on the Buffer's communication stream.
  Buffer(Group& group, const Config& config = {}, Device device = Device::host);
  // One rank of an in-process cluster.
  Buffer(LocalCluster& cluster, int rank);
  ~Buffer();  // finishes the operations already issued
  Buffer(const Buffer&) = delete;
  Buffer& operator=(const Buffer&) = delete;

  int rank() const;
  int num_ranks() const;
  int num_nodes() const;
  int local_size() const;
  int num_channels() const;
  const Config& config() const;
  Device device() const;

  // compute_layout() for this cluster and config. On a CUDA Buffer with a device topk_idx, computed on the
  // GPU after the work already enqueued on `stream` (the caller's cudaStream_t, where topk_idx was written;
  // nullptr: the legacy default stream); the call returns once the counts are on the host.
  Layout get_layout(const TensorView& topk_idx, std::int64_t num_experts, void* stream = nullptr) const;

  // Sends each token to the ranks that own its experts. Checks the arguments before returning (throws
  // Errc::invalid_argument naming the offender); everything else is reported by the Pending.
  Pending<DispatchResult> dispatch(const DispatchInputs& inputs, const Layout& layout,
                                   const DispatchOptions& options = {});
  // Dispatch of new rows along the routing of an earlier dispatch (no counts exchanged, no topk travels).
  Pending<DispatchResult> dispatch(const TensorView& x, const TensorView& x_scales, const Handle& handle,
                                   const DispatchOptions& options = {});
  // y: [handle.recv_rows(), H] bf16 or fp32, row i the result for received row i.
  Pending<CombineResult> combine(const TensorView& y, const Handle& handle,
                                 const CombineOptions& options = {});

  BufferTraffic traffic() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry
