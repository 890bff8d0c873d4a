// The kernels of the CUDA executor (device_kernels.cuh). Every role of the protocol (notify sender and
// receiver; dispatch sender, forwarder, receiver; combine sender, forwarder, receiver) is instantiated here
// with the device policy, for sm_80 and sm_90a: the proof that the protocol written once for host and GPU
// compiles for the GPU, whatever has or has not run on one.
#include "device_kernels.cuh"

namespace ferry::kernels::cuda {

namespace p = protocol;

// One block per rank: counts per (target, channel) from the layout, the notify exchange (warp 0 sends, warp 1
// receives), then the prefix sums that place every received token, written where the dispatch kernel and the
// host (totals) read them.
__global__ void __launch_bounds__(kNotifyThreads, 1) notify_kernel(LaunchArgs args) {
  extern __shared__ __align__(16) unsigned char shared[];
  RankLaunch& rank = args.ranks[blockIdx.x];
  const p::NotifyPlan& plan = rank.notify;
  const p::DispatchPlan& dispatch = rank.dispatch;
  const p::Topology& topo = plan.ctx.topo;
  const int C = topo.num_channels;
  const int R = topo.num_ranks();
  const int N = topo.num_nodes;
  const int L = topo.local_size;

  auto* to_rank = reinterpret_cast<unsigned long long*>(shared + 128);
  auto* to_node = to_rank + R * C;
  for (int i = threadIdx.x; i < (R + N) * C; i += blockDim.x) to_rank[i] = 0;
  __syncthreads();
  for (std::int64_t t = threadIdx.x; t < dispatch.num_tokens; t += blockDim.x) {
    const int channel = p::channel_of_token(dispatch.num_tokens, C, t);
    const std::uint8_t* row = dispatch.in_rank + t * R;
    for (int node = 0; node < N; ++node) {
      bool touched = false;
      for (int local = 0; local < L; ++local) {
        const int target = topo.rank_of(node, local);
        if (row[target] == 0) continue;
        atomicAdd(&to_rank[target * C + channel], 1ull);
        touched = true;
      }
      if (touched) atomicAdd(&to_node[node * C + channel], 1ull);
    }
  }
  __syncthreads();
  auto* send_to_rank = const_cast<std::int64_t*>(plan.send_to_rank);
  auto* send_to_node = const_cast<std::int64_t*>(plan.send_to_node);
  for (int i = threadIdx.x; i < R * C; i += blockDim.x)
    send_to_rank[i] = static_cast<std::int64_t>(to_rank[i]);
  for (int i = threadIdx.x; i < N * C; i += blockDim.x)
    send_to_node[i] = static_cast<std::int64_t>(to_node[i]);
  __syncthreads();

  const int warp = static_cast<int>(threadIdx.x) / 32;
  if (warp < 2) {
    const std::size_t states = 128 + sizeof(unsigned long long) * (R + N) * C;
    auto* sender_states = shared_as<p::RingState>(shared, static_cast<std::uint32_t>(states));
    auto* receiver_states = sender_states + R;
    auto* sent = reinterpret_cast<std::uint8_t*>(receiver_states + R);
    auto* received = sent + R;
    const GroupShape shape{warp * 32, 32, 1 + warp};
    DeviceIo io(shape, rank.local, rank.node_peers, shared_as<std::uint64_t>(shared, 16 * warp), args.abort,
                port_for(rank, rank.rings_per_rank - 2 + warp), args.timeout_ns);
    if (!executor_stopped(io)) {
      p::RoleOutcome outcome;
      if (warp == 0) {
        p::NotifySender<DeviceIo> role(io, plan, sender_states, sent);
        outcome = p::drive_role(role, io, args.timeout_ns);
      } else {
        p::NotifyReceiver<DeviceIo> role(io, plan, receiver_states, received);
        outcome = p::drive_role(role, io, args.timeout_ns);
      }
      finish_group(io, outcome, args, rank, plan.ctx, -1, &rank.traffic[2]);
    }
  }
  __syncthreads();
  if (threadIdx.x != 0 || rank.report->failure != 0) return;
  // Rows sorted by (source rank, channel): exclusive prefix sums in index order; records likewise per node.
  std::int64_t total = 0;
  for (int i = 0; i < R * C; ++i) {
    const_cast<std::int64_t*>(dispatch.counts.recv_offset)[i] = total;
    total += plan.recv_count[i];
  }
  std::int64_t forwarded = 0;
  for (int i = 0; i < N * C; ++i) {
    const_cast<std::int64_t*>(dispatch.counts.fwd_offset)[i] = forwarded;
    forwarded += plan.fwd_count[i];
  }
  reinterpret_cast<volatile std::int64_t*>(rank.totals)[0] = total;
  reinterpret_cast<volatile std::int64_t*>(rank.totals)[1] = forwarded;
  __threadfence_system();
}

namespace {

struct BlockRole {
  int channel = 0;
  int side = 0;
  int group = 0;
  const GroupPlan* plan = nullptr;
};

// Which rank, channel, side and role group this thread belongs to; false when it has nothing to do.
__device__ inline bool place_thread(const LaunchArgs& args, int channels, BlockRole& where,
                                    RankLaunch*& rank) {
  const int bpr = args.shape.blocks_per_rank;
  rank = &args.ranks[blockIdx.x / bpr];
  const int block = static_cast<int>(blockIdx.x) % bpr;
  where.channel = block / 2;
  where.side = block % 2;
  if (where.channel >= channels) return false;
  where.plan = find_group(args.shape.side[where.side], &where.group);
  return where.plan != nullptr;
}

__device__ inline DeviceIo make_io(const LaunchArgs& args, const RankLaunch& rank, const BlockRole& where,
                                   unsigned char* shared) {
  const GroupShape shape{where.plan->first_warp * 32, where.plan->warps * 32, 1 + where.group};
  const int ring = where.channel * args.shape.rings_per_channel + where.plan->ring;
  return DeviceIo(shape, rank.local, rank.node_peers, shared_as<std::uint64_t>(shared, 16 * where.group),
                  args.abort, port_for(rank, ring), args.timeout_ns);
}

// Builds the group's Io and role in this thread, drives the role to its end and reports. Inlined into the
// kernel: ptxas allocates registers once for the whole kernel (the most any of its roles needs).
template <class Role, class Plan, class... State>
__device__ __forceinline__ void run_group(const LaunchArgs& args, RankLaunch& rank, const BlockRole& where,
                                          unsigned char* shared, const Plan& plan, protocol::Traffic* traffic,
                                          State... state) {
  DeviceIo io = make_io(args, rank, where, shared);
  if (executor_stopped(io)) return;
  Role role(io, plan, where.channel, state...);
  const p::RoleOutcome outcome = p::drive_role(role, io, args.timeout_ns);
  finish_group(io, outcome, args, rank, plan.ctx, where.channel, traffic);
}

__device__ inline p::RoleSlice slice_of(const BlockRole& where) {
  return {where.plan->slice, where.plan->slices};
}

}  // namespace

__global__ void __launch_bounds__(kMaxThreadsPerBlock, 1) dispatch_kernel(LaunchArgs args) {
  extern __shared__ __align__(16) unsigned char shared[];
  BlockRole where;
  RankLaunch* rank = nullptr;
  if (!place_thread(args, args.ranks[blockIdx.x / args.shape.blocks_per_rank].dispatch.ctx.topo.num_channels,
                    where, rank)) {
    return;
  }
  const p::DispatchPlan& plan = rank->dispatch;
  const SharedLayout& layout = args.shape.shared[where.side];
  p::Traffic* traffic = &rank->traffic[0];
  switch (where.plan->role) {
    case DeviceRole::dispatch_send: {
      using Role = p::DispatchSender<DeviceIo>;
      run_group<Role>(args, *rank, where, shared, plan, traffic, slice_of(where),
                      shared_as<Role::Item>(shared, layout.sender));
      break;
    }
    case DeviceRole::dispatch_forward: {
      using Role = p::DispatchForwarder<DeviceIo>;
      run_group<Role>(args, *rank, where, shared, plan, traffic, slice_of(where),
                      shared_as<Role::Item>(shared, layout.forwarder_items),
                      shared_as<p::RingState>(shared, layout.forwarder_rings));
      break;
    }
    case DeviceRole::dispatch_receive: {
      using Role = p::DispatchReceiver<DeviceIo>;
      run_group<Role>(args, *rank, where, shared, plan, traffic, slice_of(where),
                      shared_as<p::RingState>(shared, layout.receiver_rings));
      break;
    }
    default:
      break;
  }
}

__global__ void __launch_bounds__(kMaxThreadsPerBlock, 1) combine_kernel(LaunchArgs args) {
  extern __shared__ __align__(16) unsigned char shared[];
  BlockRole where;
  RankLaunch* rank = nullptr;
  if (!place_thread(args, args.ranks[blockIdx.x / args.shape.blocks_per_rank].combine.ctx.topo.num_channels,
                    where, rank)) {
    return;
  }
  const p::CombinePlan& plan = rank->combine;
  const SharedLayout& layout = args.shape.shared[where.side];
  p::Traffic* traffic = &rank->traffic[1];
  switch (where.plan->role) {
    case DeviceRole::combine_send: {
      using Role = p::CombineSender<DeviceIo>;
      run_group<Role>(args, *rank, where, shared, plan, traffic, slice_of(where),
                      shared_as<p::RingState>(shared, layout.sender));
      break;
    }
    case DeviceRole::combine_forward: {
      using Role = p::CombineForwarder<DeviceIo>;
      run_group<Role>(args, *rank, where, shared, plan, traffic, slice_of(where),
                      shared_as<Role::Item>(shared, layout.forwarder_items),
                      shared_as<p::RingState>(shared, layout.forwarder_rings));
      break;
    }
    case DeviceRole::combine_receive: {
      using Role = p::CombineReceiver<DeviceIo>;
      run_group<Role>(args, *rank, where, shared, plan, traffic,
                      shared_as<Role::Cursor>(shared, layout.receiver),
                      shared_as<p::RingState>(shared, layout.receiver_rings));
      break;
    }
    default:
      break;
  }
}

}  // namespace ferry::kernels::cuda
