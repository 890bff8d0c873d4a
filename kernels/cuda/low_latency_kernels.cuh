// The kernels of the low-latency mode's CUDA executor (ferry/kernels/cuda/low_latency_engine.hpp): the device
// Io with the mode's two bulk operations, what a rank's kernels share, and the launchers of every phase.
//
// A phase kernel runs one role (protocol/low_latency_roles.hpp) for one rank: each block holds
// groups_per_block groups of warps_per_group warps, and group g of block b takes the role's items of slice
// (b * groups_per_block + g) of blocks * groups_per_block. Phases that post fabric commands run one block of
// at most kLowLatencyRings groups, each group the only producer of its own command ring.
#pragma once

#include <cuda_runtime.h>

#include <cstdint>
#include <vector>

#include "device_io.cuh"
#include "device_report.hpp"
#include "ferry/kernels/cuda/low_latency_engine.hpp"
#include "ferry/kernels/protocol/low_latency_roles.hpp"

namespace ferry::kernels::cuda {

// DeviceIo plus the fp8 cast and the weighted sum, shared by the group's threads: a thread takes whole
// 128-value blocks of the cast, and single elements of the sum, with the protocol's reference arithmetic (the
// host's bits).
class LowLatencyDeviceIo : public DeviceIo {
 public:
  __device__ LowLatencyDeviceIo(const GroupShape& shape, std::byte* local, std::byte* const* node_peers,
                                std::uint64_t* broadcast, std::uint32_t* abort, const ProxyPort& port,
                                std::uint64_t timeout_ns)
      : DeviceIo(shape, local, node_peers, broadcast, abort, port, timeout_ns), threads_(shape.threads) {}

  __device__ void quantize(const protocol::QuantizeRow& job) const {
    const std::int64_t blocks = protocol::scale_blocks(job.hidden);
    for (std::int64_t b = lane(); b < blocks; b += threads_) {
      const std::int64_t first = b * protocol::kFp8BlockSize;
      const std::int64_t left = job.hidden - first;
      const int n = static_cast<int>(left < protocol::kFp8BlockSize ? left : protocol::kFp8BlockSize);
      job.scales[b] = protocol::quantize_block(job.x + first, n, job.round_scale, job.out + first);
    }
  }

  __device__ void weighted_sum(const protocol::WeightedRows& job) const {
    for (std::int64_t i = lane(); i < job.hidden; i += threads_)
      job.out[i] = protocol::float_to_bf16(protocol::weighted_element(job, i));
  }

 private:
  int threads_;
};

// What every kernel of one rank needs, in device memory, set up once by the engine.
struct LowLatencyRankStatic {
  std::byte* local = nullptr;
  std::byte* const* node_peers = nullptr;  // device array [L]
  transport::CommandRingView rings[kLowLatencyRings] = {};
  bool rings_present = false;
  std::uint8_t region = 0;  // the fabric region id of the low-latency region
  int rank = 0;
  DeviceReport* report = nullptr;  // mapped host memory
  std::uint32_t* abort = nullptr;  // device memory: set by the first group of the rank that fails
  // Device memory, kLowLatencySequenceWords: [0] operations begun since the last clean; [1 + p] the number
  // the operation got whose plans the host issued with a buffer of parity p. Phase kernels take the
  // operation's number (buffer, use, tags) from here, not from their parameters, so a replayed CUDA graph
  // runs the next operations instead of repeating the captured ones.
  std::uint64_t* sequence = nullptr;
};

inline constexpr int kLowLatencySequenceWords = 1 + protocol::kLowLatencyBuffers;

struct LowLatencyLaunch {
  int blocks = 1;
  int groups_per_block = 1;
  int warps_per_group = 1;
  std::uint64_t timeout_ns = 0;
};

enum class LowLatencyPhase : std::uint8_t {
  acquire,
  acquire_staging,  // zero copy's early acquire, for the operation the next send half will begin
  dispatch_scatter,
  dispatch_publish,
  dispatch_gather,
  release,
  combine_return,
  combine_publish,
  combine_wait,
  combine_reduce,
};

// Enqueue one phase of one rank on `stream` (throw on a launch error).
void launch_context_phase(LowLatencyPhase phase, const protocol::LowLatencyContext& ctx,
                          const LowLatencyRankStatic* rank, const LowLatencyLaunch& launch,
                          cudaStream_t stream);
void launch_dispatch_phase(LowLatencyPhase phase, const protocol::LowLatencyDispatchPlan& plan,
                           const LowLatencyRankStatic* rank, const LowLatencyLaunch& launch,
                           cudaStream_t stream);
void launch_combine_phase(LowLatencyPhase phase, const protocol::LowLatencyCombinePlan& plan,
                          const LowLatencyRankStatic* rank, const LowLatencyLaunch& launch,
                          cudaStream_t stream);
// Every rank's abort words cleared (before zero copy's early acquire).
void launch_clear_aborts(const LowLatencyRankStatic* ranks, int count, cudaStream_t stream);
// The start of a send half on every rank: the abort words cleared and the operation numbered from the rank's
// sequence counter (bumped), recorded under the host's buffer parity `host_buffer` for the half's phases.
void launch_begin_operation(const LowLatencyRankStatic* ranks, int count, int host_buffer,
                            cudaStream_t stream);
// What ptxas gave the phase kernels, for the engine's launch-shape check and stack reservation.
struct LowLatencyKernelAttributes {
  const char* name;
  int max_threads_per_block;
  std::size_t local_bytes;
};
std::vector<LowLatencyKernelAttributes> low_latency_kernel_attributes();
// The plan's slot and send_count from its topk_idx (protocol::assign_slots on the GPU).
void launch_slots(const protocol::LowLatencyDispatchPlan& plan, const LowLatencyRankStatic* rank,
                  cudaStream_t stream);
// The operation's receive counts and waits added into the caller's statistics (device memory; null: not
// wanted), in stream order after its receive half. Nothing is launched when no target is given.
void launch_dispatch_stats(const protocol::LowLatencyDispatchPlan& plan, std::int32_t* recv_per_local_expert,
                           std::int64_t* wait_per_source, cudaStream_t stream);
void launch_combine_stats(const protocol::LowLatencyCombinePlan& plan, std::int64_t* wait_per_source,
                          cudaStream_t stream);
// clean_low_latency_buffer for `count` ranks in one cooperative launch (a block per rank): barrier, private
// words re-read, barrier.
void launch_clean(const protocol::LowLatencyContext* contexts, const LowLatencyRankStatic* ranks, int count,
                  std::uint64_t epoch, std::uint64_t timeout_ns, cudaStream_t stream);

}  // namespace ferry::kernels::cuda
