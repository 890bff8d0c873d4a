// The CUDA executor of the dispatch/combine protocol: the same roles as the host executor (protocol/), run by
// groups of warps in one kernel per operation (DeviceIo, kernels/cuda/device_io.cuh).
//
// A DeviceEngine runs every rank this process holds on one GPU: one rank when each process has a GPU of its
// own, or several "virtual ranks" sharing one GPU (tests, benchmarks). All ranks' blocks of one operation go
// into ONE cooperative launch of ranks x num_sms blocks, so every block that another one waits for is
// resident at the same time: a launch that cannot be co-resident fails with an error instead of deadlocking.
//
// Per channel, block 2c runs the sending side and block 2c + 1 the forwarding and receiving side; within a
// block, each role instance is a group of warps (GroupPlan). Every spin has a deadline (globaltimer): a role
// that makes no progress for the timeout writes a record (rank, channel, stage, peer, head, tail, expected)
// into host memory mapped for the GPU and stops, every other role stops at its next stall, and the host
// raises Errc::timeout naming the record; a malformed message raises Errc::protocol the same way.
//
// Every block of an operation spins until its peers answer, so every block of every rank on the GPU must be
// resident at once: the engine counts its own ranks and the ranks other threads or processes run on the same
// GPU (DeviceOptions::other_ranks_on_device) and refuses, at construction and before every launch, a shape
// the GPU cannot hold, naming the numbers.
//
// Waiting: every spin on the GPU has its own no-progress deadline (the timeout), so kernels end by
// themselves. The host waits for them without a total deadline: the roles bump a heartbeat in device memory
// as they progress, and the host gives up (Errc::timeout) only when it has not moved for 2 x timeout + 10 s
// (kernels that never started, or cannot end), however long a progressing operation takes.
//
// CUDA graphs: an operation issued while its stream is being captured (any capture mode) goes into the graph.
// Only a dispatch with worst-case sizing (num_worst_tokens > 0, or a cached dispatch of one) and combine can
// be captured: anything that waits on the host (a dispatch sized by its counts, finish()) is refused by name
// during a capture. The plans and per-operation arrays of a captured operation are allocated outside the
// graph (on the engine's own stream) and held by the graph (a CUDA user object) until the graph and every
// executable made of it are destroyed and their launches have ended; the engine lets go of them at its next
// call after that. Destroy the graphs before the engine (its destructor waits, bounded, for them). Every
// launch of the graph reruns the captured operations with the same operation numbers, reading the inputs'
// memory as it is at launch; finish() on the launch stream afterwards raises what a role recorded and reads
// num_recv again (a captured dispatch's counts are never cached on the host).
//
// This header has no CUDA types: pointers are device pointers, a stream is a cudaStream_t passed as void*.
// An operation's per-operation arrays are allocated and freed in the order of the stream it was issued on.
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/protocol/buffer_layout.hpp"
#include "ferry/kernels/protocol/numeric.hpp"
#include "ferry/kernels/protocol/step.hpp"
#include "ferry/transport/command_ring.hpp"

namespace ferry::kernels::cuda {

// Whether this build has the CUDA executor, and whether a GPU can run it now ("" when it can, else why not).
bool built_with_cuda();
std::string gpu_unavailable_reason();

// One rank this process runs.
struct DeviceRank {
  int rank = 0;
  std::byte* buffer = nullptr;  // its registered buffer: device memory of layout.total_bytes, zeroed
  std::vector<std::byte*>
      node_peers;  // [L] every local rank's buffer as this GPU addresses it (own included)
  std::vector<transport::CommandRingView>
      rings;  // device views of its command rings (empty on a single node)
};

struct DeviceOptions {
  int device = 0;
  int threads_per_block = 384;  // 12 warps, the most that leave every role its registers (no spills)
  int rdma_chunk = 16;
  int nvl_chunk = 8;
  Duration timeout = kDefaultTimeout;
  bool poison_outputs =
      false;  // tests: fill outputs with 0xab before each dispatch, so an unwritten row shows
  // Ranks that OTHER engines (other threads of this process, or other processes, e.g. under MPS) run on the
  // same GPU at the same time: their blocks must be resident beside this engine's.
  int other_ranks_on_device = 0;
};

// Why `kernel`'s blocks cannot all be resident at once when `engine_ranks` ranks of this engine and
// `other_ranks` ranks of other engines each launch `blocks_per_rank` of them and the GPU holds `per_sm` per
// SM on `sm_count` SMs; "" when they can.
inline std::string residency_problem(const std::string& kernel, int blocks_per_rank, int engine_ranks,
                                     int other_ranks, int threads, std::uint32_t shared_bytes, int per_sm,
                                     int sm_count) {
  const long long ranks = static_cast<long long>(engine_ranks) + other_ranks;
  const long long needed = ranks * blocks_per_rank;
  const long long held = static_cast<long long>(per_sm) * sm_count;
  if (needed <= held) return "";
  return kernel + ": every block of the " + std::to_string(ranks) + " ranks on this GPU (" +
         std::to_string(engine_ranks) + " of this engine, " + std::to_string(other_ranks) +
         " of other threads or processes) must be resident at once: " + std::to_string(ranks) + " x " +
         std::to_string(blocks_per_rank) + " = " + std::to_string(needed) + " blocks of " +
         std::to_string(threads) + " threads and " + std::to_string(shared_bytes) +
         " bytes of shared memory, but the GPU holds " + std::to_string(per_sm) + " per SM x " +
         std::to_string(sm_count) + " SMs = " + std::to_string(held) +
         ": use fewer ranks per GPU or a smaller num_sms";
}

// Hardware work queues. A CUDA context spreads its streams round robin over CUDA_DEVICE_MAX_CONNECTIONS
// queues (8 unless set before the context exists; at most 32), and the commands of streams that share a
// queue are issued in order: a rank's kernel queued behind another rank's stream wait (or behind work that
// waits for it) cannot start, and the rank whose kernel spins waiting for it times out. Ranks that are
// threads of one process on one GPU share one context, so each of their streams needs a queue of its own:
// the Buffer's, the engine's own and the caller's per rank, and the device-tensor cache's once.
constexpr int kStreamsPerRankThread = 3;
constexpr int kSharedStreams = 1;
constexpr int kDefaultDeviceConnections = 8;
constexpr int kMostDeviceConnections = 32;

// The queues CUDA_DEVICE_MAX_CONNECTIONS asks for (its value, or nullptr when unset): CUDA's default when
// unset or unreadable, clamped to what CUDA allows.
inline int device_connections(const char* value) {
  if (value == nullptr || *value == '\0') return kDefaultDeviceConnections;
  char* end = nullptr;
  const long parsed = std::strtol(value, &end, 10);
  if (end == value || *end != '\0' || parsed < 1) return kDefaultDeviceConnections;
  return static_cast<int>(std::min<long>(parsed, kMostDeviceConnections));
}

// Why `rank_threads` ranks of this process on one GPU cannot each have their own queues among
// `connections` (device_connections); "" when they can.
inline std::string connections_problem(int rank_threads, int connections) {
  const long long needed = static_cast<long long>(rank_threads) * kStreamsPerRankThread + kSharedStreams;
  if (rank_threads <= 1 || needed <= connections) return "";
  return std::to_string(rank_threads) + " ranks of this process share one GPU: their " +
         std::to_string(needed) + " streams (" + std::to_string(kStreamsPerRankThread) +
         " per rank: the Buffer's, the executor's and the caller's; and " + std::to_string(kSharedStreams) +
         " shared) need a hardware queue each, but CUDA_DEVICE_MAX_CONNECTIONS gives " +
         std::to_string(connections) +
         " (streams sharing a queue can keep one rank's kernel from starting while another's waits for "
         "it): set CUDA_DEVICE_MAX_CONNECTIONS=" +
         std::to_string(kMostDeviceConnections) +
         " before the process's first CUDA call, or run fewer ranks per GPU in one process (at most " +
         std::to_string((kMostDeviceConnections - kSharedStreams) / kStreamsPerRankThread) + ")";
}

// Command rings each rank needs (one per role group that may post, plus two for notify).
int device_rings_per_rank(const protocol::Topology& topo, const DeviceOptions& options);

// Where a rank's dispatch writes its rows, when the caller provides the memory (device pointers, `rows`
// rows).
struct DeviceOutputs {
  std::byte* recv_x = nullptr;
  float* recv_x_scales = nullptr;         // when fp8
  std::int64_t* recv_topk_idx = nullptr;  // when topk travels
  float* recv_topk_weights = nullptr;
};

// A rank's inputs to one dispatch: device pointers (or nullptr where not used).
struct DeviceDispatchInput {
  const std::byte* x = nullptr;            // [T, hidden] of kind
  const float* x_scales = nullptr;         // [T, scale_blocks(hidden)] when fp8
  const std::int64_t* topk_idx = nullptr;  // [T, K]
  const float* topk_weights = nullptr;     // [T, K]
  const std::uint8_t* in_rank = nullptr;   // [T, R] the layout
  std::int64_t num_tokens = 0;
  // Optional: called once the number of rows is known (the received count, or the worst case) for the
  // outputs; without it the engine allocates them (DeviceDispatchResult::storage).
  std::function<DeviceOutputs(std::int64_t rows)> allocate;
};

struct DeviceDispatchShape {
  protocol::PayloadKind kind = protocol::PayloadKind::bf16;
  std::int64_t hidden = 0;
  int num_topk = 0;
  std::int64_t num_experts = 0;
  int channels = 0;    // 0: the layout's
  int rdma_chunk = 0;  // 0: the options'
  int nvl_chunk = 0;
  std::uint64_t fingerprint = 0;      // of the settings every rank shares
  std::int64_t num_worst_tokens = 0;  // > 0: outputs sized up front, no host synchronisation. A cached
                                      // dispatch takes its dispatch's sizing (0 here, or the same value)
  int absent_rank = -1;  // tests: this rank's blocks leave at once, as a peer that stopped (others time out)
  // The caller's stream (cudaStream_t; nullptr: the legacy stream), when the dispatch is enqueued on another:
  // it waits for the copies of topk_idx and the layout (not for the operation), so work the caller enqueues
  // there after the call cannot change them before they are taken.
  bool has_caller_stream = false;
  void* caller_stream = nullptr;
};

// What a dispatch leaves on the GPU for combine and for a cached dispatch (device memory, owned).
struct DeviceRecord;

// A rank's outputs of one dispatch (device memory, owned by the result).
struct DeviceDispatchResult {
  std::shared_ptr<void> storage;  // keeps the arrays below alive
  std::byte* recv_x = nullptr;
  float* recv_x_scales = nullptr;
  std::int64_t* recv_topk_idx = nullptr;
  float* recv_topk_weights = nullptr;
  std::int64_t rows = 0;       // rows of the arrays above
  std::int64_t num_recv = -1;  // tokens received (-1 until read back: worst-case sizing does not wait for it)
  std::shared_ptr<DeviceRecord> record;
};

struct DeviceCombineInput {
  const std::byte* y = nullptr;      // [rows, hidden] of kind
  const float* y_weights = nullptr;  // [rows, K], optional
  const std::byte* bias = nullptr;   // [T, hidden] of kind, optional
  std::byte* out = nullptr;          // [T, hidden] of kind
  float* out_weights = nullptr;      // [T, K], optional (with y_weights)
  std::shared_ptr<DeviceRecord> record;
};

struct DeviceCombineShape {
  protocol::PayloadKind kind = protocol::PayloadKind::bf16;
  std::int64_t hidden = 0;
  int rdma_chunk = 0;
  int nvl_chunk = 0;
  std::uint64_t fingerprint = 0;
};

struct DeviceTraffic {
  protocol::Traffic dispatch;
  protocol::Traffic combine;
  protocol::Traffic notify;
};

class DeviceEngine {
 public:
  DeviceEngine(const protocol::BufferLayout& layout, std::vector<DeviceRank> ranks,
               const DeviceOptions& options);
  ~DeviceEngine();
  DeviceEngine(const DeviceEngine&) = delete;
  DeviceEngine& operator=(const DeviceEngine&) = delete;

  // One dispatch on every rank of this engine (inputs in rank order of `ranks`), enqueued on `stream`: notify
  // (unless `cached`), then the data phase. Without worst-case sizing the host waits for the counts to size
  // the outputs; with it, nothing waits (the call can be captured in a CUDA graph). A cached dispatch has the
  // rows of the dispatch whose records it repeats, and never waits. Returns once enqueued.
  std::vector<DeviceDispatchResult> dispatch(const DeviceDispatchShape& shape,
                                             const std::vector<DeviceDispatchInput>& inputs,
                                             const std::vector<std::shared_ptr<DeviceRecord>>* cached,
                                             void* stream);
  void combine(const DeviceCombineShape& shape, const std::vector<DeviceCombineInput>& inputs, void* stream);

  // Waits for `stream`, then throws what a role of the last operation recorded (Errc::timeout or
  // Errc::protocol, naming rank, channel, stage, peer, head and tail) or a CUDA error. Reads back num_recv of
  // worst-case dispatches. Refused while `stream` is being captured (it waits on the host).
  void finish(void* stream, std::vector<DeviceDispatchResult>* results = nullptr);
  // Waits until `passed()` says yes (it may throw), polling politely; fails with Errc::timeout naming `what`
  // when the executor's kernels have made no progress (their heartbeat) for 2 x timeout + 10 s.
  void wait_for(const std::function<bool()>& passed, const std::string& what);
  // Copies `bytes` of device memory to the host on the engine's own stream: ordered after nothing, so only
  // for memory whose writers the host has seen finish (an operation whose event has passed).
  void read(void* host, const void* device, std::size_t bytes) const;
  // Tokens the dispatch of `record` received, read as read() does: once the host has seen it finish (its
  // event passed), without waiting for the operations queued behind it on its stream.
  std::int64_t received(const DeviceRecord& record) const;

  // Operations are numbered 1, 2, ... in issue order (the same numbers on every rank); the first failure
  // stops the executor for good: the rings are then in an unknown state on every rank, so every later
  // operation is refused at the call, or, when it was already enqueued, leaves its kernels at once and fails.
  std::uint32_t last_operation() const;
  // For callers that track completion with their own CUDA events, once operation `operation` has ended:
  // throws what a role of it recorded, or Errc::peer_failure when an earlier operation failed and this one
  // did not run. Operations before the first failure do not throw.
  void raise_failures(std::uint32_t operation);
  // The caller gave up on operation `operation` (a CUDA error, its own deadline): stops the executor there.
  void stop_at(std::uint32_t operation, const Error& error);
  // Lets go of the launch plans (and their pinned staging) of every operation whose own event has passed.
  // Cheap; the engine also does it by itself in finish().
  void release_launches();
  // Arrays the engine frees in `stream`'s order (a dispatch's records, which Handles may keep after the
  // Buffer is gone) hold `owner`, which keeps the stream alive: it is destroyed after the last of them.
  void keep_stream_alive(void* stream, std::shared_ptr<void> owner);

  // Cumulative traffic of each rank (reads the GPU's counters on the engine's own stream: the operations the
  // host has seen finish are in it; call after finish()).
  std::vector<DeviceTraffic> traffic() const;
  int num_ranks() const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Records of a dispatch one may need on the host (tests): source rank and token of every received row.
std::vector<std::int32_t> device_recv_src_rank(const DeviceRecord& record);
std::vector<std::int32_t> device_recv_src_token(const DeviceRecord& record);
std::int64_t device_num_recv(const DeviceRecord& record);

}  // namespace ferry::kernels::cuda
