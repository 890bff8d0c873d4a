// The kernels of the CUDA executor: notify, dispatch and combine, each one launch for every rank this process
// runs (grid = ranks x blocks per rank). Every role of protocol/ is instantiated here with the device policy
// (DeviceIo), and run by a group of warps through the shared role loop (protocol/role_loop.hpp).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "device_io.cuh"
#include "ferry/kernels/protocol/combine_roles.hpp"
#include "ferry/kernels/protocol/dispatch_roles.hpp"
#include "ferry/kernels/protocol/notify_roles.hpp"
#include "ferry/kernels/protocol/plan.hpp"
#include "ferry/kernels/protocol/role_loop.hpp"

namespace ferry::kernels::cuda {

inline constexpr int kMaxThreadsPerBlock = 384;
inline constexpr int kMaxGroupsPerSide = 8;
inline constexpr int kNotifyThreads = 128;

enum class DeviceRole : std::uint8_t {
  none,
  dispatch_send,
  dispatch_forward,
  dispatch_receive,
  combine_send,
  combine_forward,
  combine_receive,
};

// One role instance of a block: a run of whole warps, the slice of the role's items it takes, and the command
// ring (index within the channel's rings) it posts to.
struct GroupPlan {
  DeviceRole role = DeviceRole::none;
  std::uint8_t slice = 0;
  std::uint8_t slices = 1;
  std::uint8_t first_warp = 0;
  std::uint8_t warps = 0;
  std::uint8_t ring = 0;
};

struct SidePlan {
  int groups = 0;
  GroupPlan group[kMaxGroupsPerSide];
};

// Where each role's shared state lives in the block's dynamic shared memory (after the broadcast words).
struct SharedLayout {
  std::uint32_t sender = 0;
  std::uint32_t forwarder_items = 0;
  std::uint32_t forwarder_rings = 0;
  std::uint32_t receiver = 0;
  std::uint32_t receiver_rings = 0;
  std::uint32_t bytes = 0;
};

struct KernelShape {
  int threads = kMaxThreadsPerBlock;
  int blocks_per_rank = 2;  // 2 per channel of the buffer
  int rings_per_channel = 2 * kMaxGroupsPerSide;
  SidePlan side[2];
  SharedLayout shared[2];
};

// Everything a kernel needs about one rank, in device memory.
struct RankLaunch {
  protocol::NotifyPlan notify;
  protocol::DispatchPlan dispatch;
  protocol::CombinePlan combine;
  std::byte* local = nullptr;
  std::byte* const* node_peers = nullptr;
  const transport::CommandRingView* rings = nullptr;  // [rings_per_rank], or nullptr on a single node
  int rings_per_rank = 0;
  DeviceReport* report = nullptr;  // mapped host memory
  std::uint32_t* claim = nullptr;  // device memory: the first failing group of the rank sets it, for good
  protocol::Traffic* traffic = nullptr;  // [3]: dispatch, combine, notify (device memory)
  std::int64_t* totals = nullptr;        // device memory: [num_recv, num_forwarded] of the last notify
};

struct LaunchArgs {
  RankLaunch* ranks = nullptr;
  int num_ranks = 0;
  KernelShape shape;
  std::uint64_t timeout_ns = 0;
  std::uint32_t* abort = nullptr;  // device memory: set by the first group that fails, never cleared
};

// ---- shared by the kernels ----

__device__ inline void add_traffic(protocol::Traffic* total, const protocol::Traffic& mine) {
  auto add = [](std::uint64_t* word, std::uint64_t value) {
    if (value != 0)
      atomicAdd(reinterpret_cast<unsigned long long*>(word), static_cast<unsigned long long>(value));
  };
  add(&total->fabric.messages, mine.fabric.messages);
  add(&total->fabric.bytes, mine.fabric.bytes);
  add(&total->node.messages, mine.node.messages);
  add(&total->node.bytes, mine.node.bytes);
  add(&total->self.messages, mine.self.messages);
  add(&total->self.bytes, mine.self.bytes);
  add(&total->fabric_puts, mine.fabric_puts);
  add(&total->fabric_signals, mine.fabric_signals);
}

// The leader of a group that ended records how (the first failure of the rank wins), stops the other groups,
// and adds its traffic to the rank's. `ctx` is the context of the plan the group ran, so the record names
// that operation and rank.
__device__ inline void finish_group(DeviceIo& io, const protocol::RoleOutcome& outcome,
                                    const LaunchArgs& args, RankLaunch& rank, const protocol::OpContext& ctx,
                                    int channel, protocol::Traffic* traffic) {
  if (!io.leader()) return;
  const DeviceFailure failure = failure_of(outcome, io.proxy_failed());
  if (failure != DeviceFailure::none) {
    // The claim is an atomic in device memory (atomics on mapped host memory need PCIe atomics); the record's
    // failure word is written last, after a fence, so the host, which may look at any time, never reads a
    // record whose fields are not there yet. Never cleared: the executor stops at its first failure.
    if (atomicCAS(rank.claim, 0u, 1u) == 0u) {
      const DeviceReport record = make_report(failure, ctx, channel, outcome, io.proxy_error());
      volatile DeviceReport* report = rank.report;
      report->operation = record.operation;
      report->rank = record.rank;
      report->channel = record.channel;
      report->stage = record.stage;
      const_cast<DeviceReport*>(report)->wait = record.wait;
      const_cast<DeviceReport*>(report)->fault = record.fault;
      report->proxy_error = record.proxy_error;
      __threadfence_system();
      report->failure = record.failure;
      __threadfence_system();
    }
    atomicExch(args.abort, 1u);  // never cleared: every later launch of this executor leaves at once
  }
  add_traffic(traffic, io.traffic());
}

// Whether an earlier failure stopped the executor (the abort word stays set): the rings are in an unknown
// state, so a group that sees it at its start leaves without touching them. The same answer in every thread
// of the group.
__device__ inline bool executor_stopped(DeviceIo& io) {
  return io.aborted();
}

// This thread's group on its side of the block, or nullptr when its warp has no role there.
__device__ inline const GroupPlan* find_group(const SidePlan& side, int* index) {
  const int warp = static_cast<int>(threadIdx.x) / 32;
  for (int g = 0; g < side.groups; ++g) {
    const GroupPlan& plan = side.group[g];
    if (warp >= plan.first_warp && warp < plan.first_warp + plan.warps) {
      *index = g;
      return &plan;
    }
  }
  return nullptr;
}

__device__ inline ProxyPort port_for(const RankLaunch& rank, int ring) {
  ProxyPort port;
  if (rank.rings != nullptr && ring < rank.rings_per_rank) {
    port.ring = rank.rings[ring];
    port.present = true;
  }
  return port;
}

template <class T>
__device__ inline T* shared_as(unsigned char* shared, std::uint32_t offset) {
  return reinterpret_cast<T*>(shared + offset);
}

// ---- notify: one block per rank ----

__global__ void __launch_bounds__(kNotifyThreads, 1) notify_kernel(LaunchArgs args);

// ---- dispatch and combine: 2 blocks per channel per rank ----

__global__ void __launch_bounds__(kMaxThreadsPerBlock, 1) dispatch_kernel(LaunchArgs args);
__global__ void __launch_bounds__(kMaxThreadsPerBlock, 1) combine_kernel(LaunchArgs args);

}  // namespace ferry::kernels::cuda
