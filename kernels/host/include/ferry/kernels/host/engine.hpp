// The host executor of the dispatch/combine protocol for one rank.
//
// Channels are C = num_sms / 2 slices of the tokens. The engine runs them on W workers (the calling thread
// plus W - 1 helper threads, W capped by the cores): worker w owns channels w, w + W, ... and steps every
// role of each of its channels round-robin, so no worker ever waits for another worker of the same rank and a
// 2-core machine cannot deadlock. With thread_per_role every role instance gets a thread of its own instead,
// as roles run at once on different warps of a GPU: orderings that only concurrent roles produce are
// exercised too. A worker that makes no progress backs off; a channel that makes no progress for the timeout
// fails the operation with an error naming rank, channel, stage, peer, head and tail.
//
// dispatch() and combine() are synchronous on the calling thread; ordering and asynchrony are the runtime's.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/kernels/host/memory.hpp"
#include "ferry/kernels/protocol/buffer_layout.hpp"
#include "ferry/kernels/protocol/numeric.hpp"
#include "ferry/kernels/protocol/step.hpp"

namespace ferry::kernels::host {

struct EngineOptions {
  int rdma_chunk = 16;
  int nvl_chunk = 8;
  int workers = 1;
  bool thread_per_role = false;
  // > 1: every role instance is run by this many threads at once and the roles that can be split are split in
  // `slices` instances, as warp groups run them on a GPU (lane_group.hpp): the device execution model on the
  // CPU.
  int lanes = 1;
  int slices = 1;
  Duration timeout = kDefaultTimeout;
};

// Settings of one operation; 0 takes the engine's. Every rank must use the same ones: the fingerprint says so
// (it travels with every message and is checked).
struct OpSettings {
  int channels = 0;  // <= the layout's channels
  int rdma_chunk = 0;
  int nvl_chunk = 0;
  std::uint64_t fingerprint = 0;
};

// What a dispatch leaves behind for combine and for a cached dispatch (the runtime's Handle holds one).
struct DispatchRecord {
  int channels = 0;
  std::int64_t num_tokens = 0;
  int num_topk = 0;
  std::int64_t num_experts = 0;
  std::vector<std::int64_t> topk_idx;      // [T * K], the routing of this rank's tokens
  std::vector<std::uint8_t> in_rank;       // [T * R], the layout it was dispatched by
  std::vector<std::int64_t> send_to_rank;  // [R * C] this rank's tokens of each channel per target rank
  std::vector<std::int64_t> send_to_node;  // [N * C] ... touching each node
  // Receive side, [R * C]: tokens from (source, channel) and their first output row.
  std::vector<std::int64_t> recv_count;
  std::vector<std::int64_t> recv_offset;
  std::int64_t num_recv = 0;
  std::vector<std::int32_t> recv_src_rank;   // [num_recv]
  std::vector<std::int32_t> recv_src_token;  // [num_recv]
  // Forward side, [N * C]: tokens relayed from the rail partner on node n, and where their records start.
  std::vector<std::int64_t> fwd_count;
  std::vector<std::int64_t> fwd_offset;
  std::vector<std::int32_t> fwd_token;  // in ring order
  std::vector<std::uint32_t> fwd_mask;
};

// Where received rows go; sized by the caller once the number of received tokens is known.
struct DispatchOutputs {
  std::int64_t capacity = 0;  // rows; tokens past it are counted but dropped (worst-case sizing too small)
  std::byte* recv_x = nullptr;
  float* recv_x_scales = nullptr;
  std::int64_t* recv_topk_idx = nullptr;
  float* recv_topk_weights = nullptr;
};

struct DispatchJob {
  protocol::PayloadKind kind = protocol::PayloadKind::bf16;
  std::int64_t hidden = 0;
  std::int64_t num_experts = 0;
  std::int64_t num_tokens = 0;
  int num_topk = 0;
  const std::byte* x = nullptr;
  const float* x_scales = nullptr;
  const std::int64_t* topk_idx = nullptr;  // [T, K]; copied into the record before anything runs
  const float* topk_weights = nullptr;
  const std::uint8_t* in_rank = nullptr;   // [T, R] the layout; copied into the record before anything runs
  const DispatchRecord* cached = nullptr;  // set: reuse this routing, skip notify, no topk travels
  OpSettings settings;
  std::function<DispatchOutputs(std::int64_t num_recv)> allocate;
};

struct CombineJob {
  protocol::PayloadKind kind = protocol::PayloadKind::bf16;
  std::int64_t hidden = 0;
  const std::byte* y = nullptr;      // [record.num_recv rows at least, hidden]
  const float* y_weights = nullptr;  // [rows, K] with out_weights: the received rows' topk weights
  const std::byte* bias = nullptr;   // [record.num_tokens, hidden] of kind, optional
  std::byte* out = nullptr;          // [record.num_tokens, hidden]
  float* out_weights = nullptr;      // [record.num_tokens, K], optional
  const DispatchRecord* record = nullptr;
  OpSettings settings;  // channels: the dispatch's
};

// Cumulative traffic of one engine, by operation kind (notify is control traffic, never data).
struct EngineTraffic {
  protocol::Traffic dispatch;
  protocol::Traffic combine;
  protocol::Traffic notify;
};

class Engine {
 public:
  Engine(int rank, const protocol::BufferLayout& layout, RankMemory memory, const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  DispatchRecord dispatch(const DispatchJob& job);
  void combine(const CombineJob& job);

  int rank() const;
  int workers() const;
  const EngineTraffic& traffic() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Worker threads (and so remote writers, one command ring each) an engine with these options runs.
int engine_threads(const EngineOptions& options, int max_channels);

}  // namespace ferry::kernels::host
