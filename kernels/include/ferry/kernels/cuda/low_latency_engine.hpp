// The CUDA executor of the low-latency mode: the roles of protocol/low_latency_roles.hpp, each phase one
// kernel per rank, run by groups of warps with the device Io (kernels/cuda/low_latency_kernels.cuh).
//
// A half of an operation is a few kernels in stream order (dispatch send: slots, acquire, scatter, publish;
// receive: gather, release; combine send: acquire, return; receive: wait, reduce, release). Nothing in a half
// waits on the host and every plan travels as a kernel parameter, so a half can be captured in a CUDA graph;
// between the halves no kernel runs (the hook launches the receive half). A waiting phase masks a silent peer
// after ctx.mask_after_ns as on the host; a fault or a phase that stops moving writes a record into host
// memory mapped for the GPU, stops the rank's other groups, and finish() raises it.
//
// This header has no CUDA types: pointers are device pointers, a stream is a cudaStream_t passed as void*.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/kernels/protocol/low_latency_roles.hpp"
#include "ferry/transport/command_ring.hpp"

namespace ferry::kernels::cuda {

// Command rings each rank needs: one per role group of a posting phase (publish, return, release, barrier).
inline constexpr int kLowLatencyRings = 4;

struct LowLatencyDeviceOptions {
  int device = 0;
  int blocks_per_rank = 4;  // blocks of the bulk phases (scatter, gather, reduce, wait)
  int groups_per_block = 4;
  int warps_per_group = 2;
  Duration timeout = kDefaultTimeout;  // a phase that stops moving this long fails
};

// One rank this process runs.
struct LowLatencyDeviceRank {
  int rank = 0;
  std::byte* region = nullptr;                    // its low-latency region (device memory, zeroed)
  std::vector<std::byte*> node_peers;             // [L] every local rank's region as this GPU addresses it
  std::vector<transport::CommandRingView> rings;  // kLowLatencyRings device views (empty on one node)
};

class LowLatencyDeviceEngine {
 public:
  LowLatencyDeviceEngine(const protocol::Topology& topo, std::vector<LowLatencyDeviceRank> ranks,
                         const LowLatencyDeviceOptions& options);
  ~LowLatencyDeviceEngine();
  LowLatencyDeviceEngine(const LowLatencyDeviceEngine&) = delete;
  LowLatencyDeviceEngine& operator=(const LowLatencyDeviceEngine&) = delete;

  int num_ranks() const;

  // Plans with device pointers, one per rank of this engine in its order. dispatch_send computes the plan's
  // slot and send_count arrays on the GPU from topk_idx (an id out of range or named twice by one token is
  // recorded as a fault and left out, so the peers never wait for it).
  void dispatch_send(const std::vector<protocol::LowLatencyDispatchPlan>& plans, void* stream);
  void dispatch_receive(const std::vector<protocol::LowLatencyDispatchPlan>& plans, void* stream);
  void combine_send(const std::vector<protocol::LowLatencyCombinePlan>& plans, void* stream);
  void combine_receive(const std::vector<protocol::LowLatencyCombinePlan>& plans, void* stream);
  // Zero copy: before the caller writes the combine staging of the operation the next send half begins,
  // wait (on `stream`) until every peer has released that buffer's previous use (protocol's
  // LowLatencyAcquireWait; the combine's own acquire then records the use). No send half may be issued in
  // between.
  void acquire_staging(const std::vector<protocol::LowLatencyContext>& contexts, void* stream);
  // One rank's operation: its receive counts and waits added into the caller's statistics tensors (device
  // memory; null: not wanted) on `stream`, after the receive half: int32 [E/R] rows received per local
  // expert, int64 [R] nanoseconds waited for each source rank's rows (DeepEP's
  // cumulative_local_expert_recv_stats and *_wait_recv_cost_stats). Capturable.
  void add_dispatch_stats(const protocol::LowLatencyDispatchPlan& plan, std::int32_t* recv_per_local_expert,
                          std::int64_t* wait_per_source, void* stream);
  void add_combine_stats(const protocol::LowLatencyCombinePlan& plan, std::int64_t* wait_per_source,
                         void* stream);
  // clean_low_latency_buffer for every rank of this engine at once (one launch: the ranks' barriers wait for
  // each other). Not graph-capturable; synchronises the stream.
  void clean(const std::vector<protocol::LowLatencyContext>& contexts, std::uint64_t epoch, void* stream);

  // Waits for `stream`, then throws the first failure a group recorded (Errc::protocol naming rank, phase and
  // peer, Errc::timeout, the proxy's failure) or a CUDA error.
  void finish(void* stream);
  // The same without waiting: throws (and clears) the failures the kernels have recorded so far. The records
  // live in host memory mapped for the GPU, so this reads what finished phases wrote; not thread-safe.
  void raise_failures();

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// Every rank of an N x L cluster as virtual ranks of this process on one GPU (the low-latency twin of
// VirtualCluster): regions in device memory, node peers as plain device pointers, other nodes through a
// proxy whose fabrics copy device to device (transport::DeviceCopyWorld).
class LowLatencyVirtualCluster {
 public:
  LowLatencyVirtualCluster(int num_nodes, int local_size, std::size_t bytes,
                           const LowLatencyDeviceOptions& options);
  ~LowLatencyVirtualCluster();
  LowLatencyVirtualCluster(const LowLatencyVirtualCluster&) = delete;
  LowLatencyVirtualCluster& operator=(const LowLatencyVirtualCluster&) = delete;

  int num_ranks() const;
  std::byte* region(int rank) const;
  LowLatencyDeviceEngine& engine();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::kernels::cuda
