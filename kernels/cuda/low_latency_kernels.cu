// The low-latency mode's kernels (low_latency_kernels.cuh): every role of protocol/low_latency_roles.hpp
// instantiated with the device Io, for sm_80 and sm_90a.
#include <utility>

#include "device_memory.cuh"
#include "ferry/kernels/protocol/role_loop.hpp"
#include "low_latency_kernels.cuh"

namespace ferry::kernels::cuda {

namespace p = protocol;

namespace {

// The group's leader records how its role ended (the rank's first failure wins) and stops the other groups.
__device__ void report_outcome(const LowLatencyDeviceIo& io, const p::RoleOutcome& outcome,
                               const LowLatencyRankStatic& rank) {
  if (!io.leader()) return;
  DeviceFailure failure = DeviceFailure::none;
  if (io.proxy_failed()) {
    failure = DeviceFailure::proxy;
  } else if (outcome.end == p::RoleEnd::fault) {
    failure = DeviceFailure::fault;
  } else if (outcome.end == p::RoleEnd::timeout) {
    failure = DeviceFailure::timeout;
  }
  if (failure == DeviceFailure::none) return;
  if (atomicCAS_system(&rank.report->failure, 0u, static_cast<unsigned>(failure)) == 0u) {
    rank.report->rank = rank.rank;
    rank.report->channel = -1;
    rank.report->stage = static_cast<std::uint32_t>(outcome.last.stage);
    rank.report->wait = outcome.last.wait;
    rank.report->fault = outcome.last.fault;
    rank.report->proxy_error = io.proxy_error();
    __threadfence_system();
  }
  atomicExch(rank.abort, 1u);
}

// This thread's group: its Io (the group's own command ring when it may post) and its slice of the items.
struct GroupPlace {
  GroupShape shape;
  p::RoleSlice slice;
  ProxyPort port;
};

__device__ GroupPlace place(const LowLatencyRankStatic& rank, const LowLatencyLaunch& launch) {
  const int threads = launch.warps_per_group * 32;
  const int group = static_cast<int>(threadIdx.x) / threads;
  GroupPlace where;
  where.shape = GroupShape{group * threads, threads, 1 + group};
  const int index = static_cast<int>(blockIdx.x) * launch.groups_per_block + group;
  where.slice = p::RoleSlice{index, static_cast<int>(gridDim.x) * launch.groups_per_block};
  if (rank.rings_present && index < kLowLatencyRings) {
    where.port.ring = rank.rings[index];
    where.port.region = rank.region;
    where.port.present = true;
  }
  return where;
}

template <class Role>
__device__ void drive_group(LowLatencyDeviceIo& io, Role& role, const LowLatencyRankStatic& rank,
                            const LowLatencyLaunch& launch) {
  const p::RoleOutcome outcome = p::drive_role(role, io, launch.timeout_ns);
  report_outcome(io, outcome, rank);
}

// Builds the group's Io and role from (io, plan, slice) and drives it. Kept out of line so each role gets its
// own register allocation.
template <class Role, class Plan>
__device__ __noinline__ void run_role(const Plan& plan, const LowLatencyRankStatic& rank,
                                      const LowLatencyLaunch& launch) {
  extern __shared__ __align__(16) unsigned char shared[];
  const GroupPlace where = place(rank, launch);
  LowLatencyDeviceIo io(where.shape, rank.local, rank.node_peers,
                        reinterpret_cast<std::uint64_t*>(shared) + 2 * (where.shape.barrier - 1), rank.abort,
                        where.port, launch.timeout_ns);
  Role role(io, plan, where.slice);
  drive_group(io, role, rank, launch);
}

using Io = LowLatencyDeviceIo;

// The number the rank's sequence gave the operation these parameters were issued for (the host's buffer
// parity names it: at most two operations are in flight, one per buffer).
__device__ std::uint32_t live_operation(const p::LowLatencyContext& issued,
                                        const LowLatencyRankStatic& rank) {
  return static_cast<std::uint32_t>(rank.sequence[1 + issued.buffer]);
}

__global__ void context_phase(p::LowLatencyContext issued, const LowLatencyRankStatic* rank,
                              LowLatencyLaunch launch, LowLatencyPhase phase) {
  p::LowLatencyContext ctx = issued;
  if (phase == LowLatencyPhase::acquire_staging) {
    // No send half has begun the operation yet: it will take the number the counter holds now.
    p::set_operation(ctx, static_cast<std::uint32_t>(rank->sequence[0]));
    run_role<p::LowLatencyAcquireWait<Io>>(ctx, *rank, launch);
    return;
  }
  p::set_operation(ctx, live_operation(issued, *rank));
  if (phase == LowLatencyPhase::acquire) {
    run_role<p::LowLatencyAcquire<Io>>(ctx, *rank, launch);
  } else {
    run_role<p::LowLatencyRelease<Io>>(ctx, *rank, launch);
  }
}

__global__ void dispatch_phase(p::LowLatencyDispatchPlan issued, const LowLatencyRankStatic* rank,
                               LowLatencyLaunch launch, LowLatencyPhase phase) {
  const p::LowLatencyDispatchPlan plan = p::at_operation(issued, live_operation(issued.ctx, *rank));
  switch (phase) {
    case LowLatencyPhase::dispatch_scatter:
      run_role<p::LowLatencyDispatchScatter<Io>>(plan, *rank, launch);
      break;
    case LowLatencyPhase::dispatch_publish:
      run_role<p::LowLatencyDispatchPublish<Io>>(plan, *rank, launch);
      break;
    case LowLatencyPhase::dispatch_gather:
      run_role<p::LowLatencyDispatchGather<Io>>(plan, *rank, launch);
      break;
    default:
      break;
  }
}

__global__ void combine_phase(p::LowLatencyCombinePlan issued, const LowLatencyRankStatic* rank,
                              LowLatencyLaunch launch, LowLatencyPhase phase) {
  const p::LowLatencyCombinePlan plan = p::at_operation(issued, live_operation(issued.ctx, *rank));
  switch (phase) {
    case LowLatencyPhase::combine_return:
      run_role<p::LowLatencyCombineReturn<Io>>(plan, *rank, launch);
      break;
    case LowLatencyPhase::combine_publish:
      run_role<p::LowLatencyCombinePublish<Io>>(plan, *rank, launch);
      break;
    case LowLatencyPhase::combine_wait:
      run_role<p::LowLatencyCombineWait<Io>>(plan, *rank, launch);
      break;
    case LowLatencyPhase::combine_reduce:
      run_role<p::LowLatencyCombineReduce<Io>>(plan, *rank, launch);
      break;
    default:
      break;
  }
}

// One thread per rank: assign_slots is a scan in (token, slot) order, cheap at decode sizes. A bad id is
// recorded (and left out of the slots, so no peer waits for its row); finish() raises it.
__global__ void slots_kernel(p::LowLatencyDispatchPlan plan, const LowLatencyRankStatic* rank) {
  if (threadIdx.x != 0 || blockIdx.x != 0) return;
  const p::SlotProblem problem =
      p::assign_slots(plan.topk_idx, plan.num_tokens, plan.num_topk, plan.ctx.layout.E(),
                      const_cast<std::int32_t*>(plan.slot), const_cast<std::int32_t*>(plan.send_count));
  if (!problem.any()) return;
  if (atomicCAS_system(&rank->report->failure, 0u, static_cast<unsigned>(DeviceFailure::fault)) == 0u) {
    rank->report->rank = rank->rank;
    rank->report->channel = -1;
    rank->report->stage = static_cast<std::uint32_t>(p::Stage::low_latency_dispatch_send);
    rank->report->fault.kind = p::FaultKind::bad_expert;
    rank->report->fault.peer_rank = rank->rank;
    rank->report->fault.token = problem.index / plan.num_topk;
    rank->report->fault.got = plan.topk_idx[problem.index];
    rank->report->fault.expected = plan.ctx.layout.E();
    __threadfence_system();
  }
}

// Thread i: rank i's abort words cleared (zero copy's early acquire, which comes before the send half's
// begin_operation_kernel, must wait for real: an abort left by a failed operation would skip the wait).
__global__ void clear_aborts_kernel(const LowLatencyRankStatic* ranks, int count) {
  for (int i = static_cast<int>(threadIdx.x); i < count; i += static_cast<int>(blockDim.x))
    for (int w = 0; w < kAbortWords; ++w) ranks[i].abort[w] = 0;
}

// Thread i: rank i's abort words cleared, its operation numbered.
__global__ void begin_operation_kernel(const LowLatencyRankStatic* ranks, int count, int host_buffer) {
  for (int i = static_cast<int>(threadIdx.x); i < count; i += static_cast<int>(blockDim.x)) {
    const LowLatencyRankStatic& rank = ranks[i];
    for (int w = 0; w < kAbortWords; ++w) rank.abort[w] = 0;
    const std::uint64_t operation = rank.sequence[0];
    rank.sequence[1 + host_buffer] = operation;
    rank.sequence[0] = operation + 1;
  }
}

// Leader of the clean's warp: every fabric command the rank posted before the clean has taken effect before
// its barrier signal goes out. The proxy drains a rank's rings in round-robin batches, so the barrier signal
// on ring 0 could otherwise overtake a release or arrival posted earlier on rings 1-3, and a peer would copy
// that word into its private copy before the late increment lands. Rings 1-3 are waited for until every
// command completed; then a flush on ring 0 (which completes once every earlier operation of the proxy
// thread, those of rings 1-3 included, is visible at its target) is posted and waited for. Waiting on the
// device keeps the clean one launch; the alternative, per-peer order across a rank's rings in the proxy,
// would change the transport for every mode. Returns false on a ring error or after timeout_ns.
__device__ bool drain_rings(const LowLatencyRankStatic& rank, std::uint64_t timeout_ns,
                            std::uint32_t* error) {
  if (!rank.rings_present) return true;
  const std::uint64_t start = global_time_ns();
  auto completed = [&](const transport::CommandRingView& ring) {
    const std::uint64_t posted = transport::ring_load_acquire(&ring.control->tail);
    unsigned attempt = 0;
    while (transport::ring_load_acquire(&ring.control->completed) < posted) {
      *error = load_acquire_sys(&ring.control->error);
      if (*error != 0 || global_time_ns() - start > timeout_ns) return false;
      DeviceIo::pause(attempt++);
    }
    return true;
  };
  for (int k = 1; k < kLowLatencyRings; ++k)
    if (!completed(rank.rings[k])) return false;
  transport::CommandRingProducer producer{rank.rings[0],
                                          transport::ring_load_acquire(&rank.rings[0].control->tail),
                                          transport::ring_load_acquire(&rank.rings[0].control->head)};
  unsigned attempt = 0;
  while (!producer.try_post(transport::make_flush())) {
    *error = load_acquire_sys(&rank.rings[0].control->error);
    if (*error != 0 || global_time_ns() - start > timeout_ns) return false;
    DeviceIo::pause(attempt++);
  }
  return completed(rank.rings[0]);
}

// A block per rank, one warp each: earlier fabric commands drained, barrier, private words re-read, barrier,
// the rank's operation count back to 0. A cooperative launch, so every rank's block runs at once (or the
// launch fails instead of deadlocking).
__global__ void clean_kernel(const p::LowLatencyContext* contexts, const LowLatencyRankStatic* ranks,
                             std::uint64_t epoch, std::uint64_t timeout_ns) {
  __shared__ __align__(16) std::uint64_t broadcast[2];
  const LowLatencyRankStatic& rank = ranks[blockIdx.x];
  const p::LowLatencyContext& ctx = contexts[blockIdx.x];
  ProxyPort port;
  if (rank.rings_present) {
    port.ring = rank.rings[0];
    port.region = rank.region;
    port.present = true;
  }
  if (threadIdx.x == 0) {
    std::uint32_t error = 0;
    if (!drain_rings(rank, timeout_ns, &error)) {
      if (atomicCAS_system(&rank.report->failure, 0u, static_cast<unsigned>(DeviceFailure::proxy)) == 0u) {
        rank.report->rank = rank.rank;
        rank.report->channel = -1;
        rank.report->stage = static_cast<std::uint32_t>(p::Stage::low_latency_barrier);
        rank.report->proxy_error = error != 0 ? error : 0xffffffffu;
        __threadfence_system();
      }
      atomicExch(rank.abort, 1u);
    }
  }
  __syncwarp();
  // The Io reads ring 0's tail now, after the flush.
  LowLatencyDeviceIo io(GroupShape{0, 32, 1}, rank.local, rank.node_peers, broadcast, rank.abort, port,
                        timeout_ns);
  p::LowLatencyBarrier<Io> first(io, ctx, 2 * epoch + 1);
  p::RoleOutcome outcome = p::drive_role(first, io, timeout_ns);
  report_outcome(io, outcome, rank);
  if (outcome.end != p::RoleEnd::done) return;
  p::sync_private_words(io, ctx.layout);
  if (io.leader()) rank.sequence[0] = 0;  // operations count from the clean, on the host too
  p::LowLatencyBarrier<Io> second(io, ctx, 2 * epoch + 2);
  outcome = p::drive_role(second, io, timeout_ns);
  report_outcome(io, outcome, rank);
}

// The caller's statistics tensors (DeepEP's cumulative_local_expert_recv_stats and *_wait_recv_cost_stats),
// after an operation's receive half: one block, each entry added by one thread, so the sums need no atomics
// (the buffer's stream runs one operation's statistics at a time). Either target may be null.
__global__ void dispatch_stats_kernel(const std::int32_t* recv_count, const std::int64_t* wait_ns,
                                      int local_experts, int num_ranks, std::int32_t* recv_per_local_expert,
                                      std::int64_t* wait_per_source) {
  for (int e = static_cast<int>(threadIdx.x); recv_per_local_expert != nullptr && e < local_experts;
       e += static_cast<int>(blockDim.x))
    recv_per_local_expert[e] += recv_count[e];
  for (int s = static_cast<int>(threadIdx.x); wait_per_source != nullptr && s < num_ranks;
       s += static_cast<int>(blockDim.x)) {
    std::int64_t waited = 0;
    for (int e = 0; e < local_experts; ++e) waited += wait_ns[static_cast<std::int64_t>(e) * num_ranks + s];
    wait_per_source[s] += waited;
  }
}

// The combine's waits are per expert; a source rank owns local_experts consecutive experts.
__global__ void combine_stats_kernel(const std::int64_t* wait_ns, int local_experts, int num_ranks,
                                     std::int64_t* wait_per_source) {
  for (int s = static_cast<int>(threadIdx.x); s < num_ranks; s += static_cast<int>(blockDim.x)) {
    std::int64_t waited = 0;
    for (int e = 0; e < local_experts; ++e)
      waited += wait_ns[static_cast<std::int64_t>(s) * local_experts + e];
    wait_per_source[s] += waited;
  }
}

constexpr int kStatsThreads = 256;

dim3 threads_of(const LowLatencyLaunch& launch) {
  return dim3(static_cast<unsigned>(launch.groups_per_block * launch.warps_per_group * 32));
}

std::size_t shared_of(const LowLatencyLaunch& launch) {
  return 16u * static_cast<std::size_t>(launch.groups_per_block);
}

}  // namespace

void launch_context_phase(LowLatencyPhase phase, const p::LowLatencyContext& ctx,
                          const LowLatencyRankStatic* rank, const LowLatencyLaunch& launch,
                          cudaStream_t stream) {
  context_phase<<<launch.blocks, threads_of(launch), shared_of(launch), stream>>>(ctx, rank, launch, phase);
  check(cudaGetLastError(), "launch of a low-latency phase");
}

void launch_dispatch_phase(LowLatencyPhase phase, const p::LowLatencyDispatchPlan& plan,
                           const LowLatencyRankStatic* rank, const LowLatencyLaunch& launch,
                           cudaStream_t stream) {
  dispatch_phase<<<launch.blocks, threads_of(launch), shared_of(launch), stream>>>(plan, rank, launch, phase);
  check(cudaGetLastError(), "launch of a low-latency dispatch phase");
}

void launch_combine_phase(LowLatencyPhase phase, const p::LowLatencyCombinePlan& plan,
                          const LowLatencyRankStatic* rank, const LowLatencyLaunch& launch,
                          cudaStream_t stream) {
  combine_phase<<<launch.blocks, threads_of(launch), shared_of(launch), stream>>>(plan, rank, launch, phase);
  check(cudaGetLastError(), "launch of a low-latency combine phase");
}

void launch_clear_aborts(const LowLatencyRankStatic* ranks, int count, cudaStream_t stream) {
  clear_aborts_kernel<<<1, 128, 0, stream>>>(ranks, count);
  check(cudaGetLastError(), "launch of the low-latency abort clear");
}

void launch_begin_operation(const LowLatencyRankStatic* ranks, int count, int host_buffer,
                            cudaStream_t stream) {
  begin_operation_kernel<<<1, 128, 0, stream>>>(ranks, count, host_buffer);
  check(cudaGetLastError(), "launch of the low-latency operation start");
}

std::vector<LowLatencyKernelAttributes> low_latency_kernel_attributes() {
  std::vector<LowLatencyKernelAttributes> result;
  const std::pair<const char*, const void*> kernels[] = {
      {"context_phase", reinterpret_cast<const void*>(&context_phase)},
      {"dispatch_phase", reinterpret_cast<const void*>(&dispatch_phase)},
      {"combine_phase", reinterpret_cast<const void*>(&combine_phase)},
      {"clean_kernel", reinterpret_cast<const void*>(&clean_kernel)},
      {"slots_kernel", reinterpret_cast<const void*>(&slots_kernel)},
      {"begin_operation_kernel", reinterpret_cast<const void*>(&begin_operation_kernel)},
      {"clear_aborts_kernel", reinterpret_cast<const void*>(&clear_aborts_kernel)},
      {"dispatch_stats_kernel", reinterpret_cast<const void*>(&dispatch_stats_kernel)},
      {"combine_stats_kernel", reinterpret_cast<const void*>(&combine_stats_kernel)}};
  for (const auto& [name, kernel] : kernels) {
    cudaFuncAttributes attributes{};
    check(cudaFuncGetAttributes(&attributes, kernel), "cudaFuncGetAttributes");
    result.push_back({name, attributes.maxThreadsPerBlock, attributes.localSizeBytes});
  }
  return result;
}

void launch_dispatch_stats(const p::LowLatencyDispatchPlan& plan, std::int32_t* recv_per_local_expert,
                           std::int64_t* wait_per_source, cudaStream_t stream) {
  if (recv_per_local_expert == nullptr && wait_per_source == nullptr) return;
  dispatch_stats_kernel<<<1, kStatsThreads, 0, stream>>>(
      plan.recv_count, plan.wait_ns, static_cast<int>(plan.ctx.local_experts()), plan.ctx.num_ranks(),
      recv_per_local_expert, wait_per_source);
  check(cudaGetLastError(), "launch of the low-latency dispatch statistics");
}

void launch_combine_stats(const p::LowLatencyCombinePlan& plan, std::int64_t* wait_per_source,
                          cudaStream_t stream) {
  if (wait_per_source == nullptr) return;
  combine_stats_kernel<<<1, kStatsThreads, 0, stream>>>(
      plan.wait_ns, static_cast<int>(plan.ctx.local_experts()), plan.ctx.num_ranks(), wait_per_source);
  check(cudaGetLastError(), "launch of the low-latency combine statistics");
}

void launch_slots(const p::LowLatencyDispatchPlan& plan, const LowLatencyRankStatic* rank,
                  cudaStream_t stream) {
  slots_kernel<<<1, 32, 0, stream>>>(plan, rank);
  check(cudaGetLastError(), "launch of the low-latency slot assignment");
}

void launch_clean(const p::LowLatencyContext* contexts, const LowLatencyRankStatic* ranks, int count,
                  std::uint64_t epoch, std::uint64_t timeout_ns, cudaStream_t stream) {
  void* args[] = {&contexts, &ranks, &epoch, &timeout_ns};
  check(cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&clean_kernel), dim3(count), dim3(32), args,
                                    0, stream),
        "cooperative launch of the low-latency clean (every rank's block at once)");
}

}  // namespace ferry::kernels::cuda
