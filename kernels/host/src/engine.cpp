#include "ferry/kernels/host/engine.hpp"

#include <algorithm>
#include <numeric>

#include "channel_runner.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/host/host_io.hpp"
#include "ferry/kernels/protocol/combine_roles.hpp"
#include "ferry/kernels/protocol/dispatch_roles.hpp"
#include "ferry/kernels/protocol/memory_order.hpp"
#include "ferry/kernels/protocol/notify_roles.hpp"
#include "ferry/kernels/protocol/plan.hpp"
#include "ferry/kernels/protocol/routing.hpp"

namespace ferry::kernels::host {

namespace p = protocol;
using At = p::HostAtomics;

struct Engine::Impl {
  int rank;
  p::BufferLayout layout;
  p::Topology topo;
  RankMemory memory;
  EngineOptions options;
  WorkerPool pool;
  std::vector<std::unique_ptr<RemoteWriter>> writers;  // one per worker
  std::uint32_t operation = 0;
  EngineTraffic traffic;

  Impl(int rank_, const p::BufferLayout& layout_, RankMemory memory_, const EngineOptions& options_, int workers)
      : rank(rank_), layout(layout_), topo(layout_.params.topo), memory(memory_), options(options_), pool(workers) {
    for (int w = 0; w < workers; ++w) writers.push_back(memory.remote ? memory.remote->open_writer() : nullptr);
  }

  HostIo io_for(int worker, p::Traffic* tally) {
    return HostIo(memory.local, memory.node, writers[worker].get(), tally);
  }

  RunContext run_context() const { return {rank, options.timeout}; }

  p::OpContext context(p::PayloadKind kind, std::int64_t hidden, std::int64_t num_experts) {
    p::OpContext ctx;
    ctx.layout = &layout;
    ctx.topo = topo;
    ctx.split = {num_experts, num_experts / topo.num_ranks()};
    ctx.rank = rank;
    ctx.operation = ++operation;
    ctx.kind = kind;
    ctx.hidden = hidden;
    ctx.rdma_chunk = options.rdma_chunk;
    ctx.nvl_chunk = options.nvl_chunk;
    return ctx;
  }

  // Channel c runs on worker c % W; the calling thread is worker 0.
  void run_channels(std::vector<std::unique_ptr<ChannelTask>>& tasks, p::Traffic& total) {
    PhaseState state;
    int workers = pool.size();
    std::vector<p::Traffic> tallies(workers);
    pool.run([&](int worker) {
      std::vector<ChannelTask*> mine;
      for (std::size_t c = worker; c < tasks.size(); c += workers) mine.push_back(tasks[c].get());
      HostIo io = io_for(worker, &tallies[worker]);
      run_tasks(mine, io, run_context(), state);
    });
    for (const p::Traffic& tally : tallies) total.add(tally);
    state.rethrow();
  }

  void notify(const p::OpContext& ctx, const DispatchJob& job, DispatchRecord& record) {
    const int channels = topo.num_channels;
    std::vector<std::int64_t> to_rank(static_cast<std::size_t>(topo.num_ranks()) * channels, 0);
    std::vector<std::int64_t> to_node(static_cast<std::size_t>(topo.num_nodes) * channels, 0);
    for (std::int64_t t = 0; t < job.num_tokens; ++t) {
      int channel = p::channel_of_token(job.num_tokens, channels, t);
      const std::int64_t* row = job.topk_idx + t * job.num_topk;
      std::uint64_t nodes = p::node_mask_of(row, job.num_topk, ctx.split, topo);
      for (int n = 0; n < topo.num_nodes; ++n) to_node[n * channels + channel] += nodes >> n & 1u;
      for (int k = 0; k < job.num_topk; ++k) {
        if (row[k] < 0) continue;
        int target = ctx.split.rank_of(row[k]);
        bool counted = false;
        for (int j = 0; j < k && !counted; ++j) counted = row[j] >= 0 && ctx.split.rank_of(row[j]) == target;
        if (!counted) ++to_rank[target * channels + channel];
      }
    }
    record.recv_count.assign(static_cast<std::size_t>(topo.num_ranks()) * channels, 0);
    record.fwd_count.assign(static_cast<std::size_t>(topo.num_nodes) * channels, 0);
    p::NotifyPlan plan;
    plan.ctx = ctx;
    plan.num_topk = job.num_topk;
    plan.send_to_rank = to_rank.data();
    plan.send_to_node = to_node.data();
    plan.recv_count = record.recv_count.data();
    plan.fwd_count = record.fwd_count.data();

    ChannelTask task;
    task.u8.resize(2 * static_cast<std::size_t>(topo.num_ranks()));
    task.add([role = p::NotifySender<At, HostIo>(plan, task.u8.data())](HostIo& io) mutable { return role.step(io); });
    task.add([role = p::NotifyReceiver<At, HostIo>(plan, task.u8.data() + topo.num_ranks())](HostIo& io) mutable {
      return role.step(io);
    });
    PhaseState state;
    HostIo io = io_for(0, &traffic.notify);
    ChannelTask* tasks[] = {&task};
    run_tasks(tasks, io, run_context(), state);
    state.rethrow();
  }
};

namespace {

// Exclusive prefix sums in index order: (source, channel) blocks in order place rows by (source rank, token).
std::vector<std::int64_t> exclusive_prefix(const std::vector<std::int64_t>& counts, std::int64_t& total) {
  std::vector<std::int64_t> offsets(counts.size());
  total = 0;
  for (std::size_t i = 0; i < counts.size(); ++i) {
    offsets[i] = total;
    total += counts[i];
  }
  return offsets;
}

p::RoutingCounts counts_of(const DispatchRecord& record) {
  return {record.recv_count.data(), record.recv_offset.data(), record.fwd_count.data(), record.fwd_offset.data()};
}

}  // namespace

Engine::Engine(int rank, const p::BufferLayout& layout, RankMemory memory, const EngineOptions& options) {
  const p::Topology& topo = layout.params.topo;
  if (memory.bytes < layout.total_bytes) {
    fail(Errc::invalid_argument, "rank " + std::to_string(rank) + "'s buffer has " + std::to_string(memory.bytes) +
                                     " bytes but the config needs " + std::to_string(layout.total_bytes));
  }
  if (topo.num_nodes > 1 && memory.remote == nullptr) {
    fail(Errc::invalid_argument, "rank " + std::to_string(rank) + " has peers on " +
                                     std::to_string(topo.num_nodes - 1) + " other nodes but no remote memory");
  }
  int workers = std::clamp(options.workers, 1, topo.num_channels);
  impl_ = std::make_unique<Impl>(rank, layout, memory, options, workers);
}

Engine::~Engine() = default;

int Engine::rank() const { return impl_->rank; }
int Engine::workers() const { return impl_->pool.size(); }
const EngineTraffic& Engine::traffic() const { return impl_->traffic; }

DispatchRecord Engine::dispatch(const DispatchJob& job) {
  Impl& impl = *impl_;
  const p::Topology& topo = impl.topo;
  const int channels = topo.num_channels;
  p::OpContext ctx = impl.context(job.kind, job.hidden, job.num_experts);

  DispatchRecord record;
  if (job.cached != nullptr) {
    const DispatchRecord& cached = *job.cached;
    record.num_tokens = cached.num_tokens;
    record.num_topk = cached.num_topk;
    record.num_experts = cached.num_experts;
    record.topk_idx = cached.topk_idx;
    record.recv_count = cached.recv_count;
    record.fwd_count = cached.fwd_count;
  } else {
    record.num_tokens = job.num_tokens;
    record.num_topk = job.num_topk;
    record.num_experts = job.num_experts;
    record.topk_idx.assign(job.topk_idx, job.topk_idx + job.num_tokens * job.num_topk);
    impl.notify(ctx, job, record);
  }
  record.recv_offset = exclusive_prefix(record.recv_count, record.num_recv);
  std::int64_t num_forwarded = 0;
  record.fwd_offset = exclusive_prefix(record.fwd_count, num_forwarded);
  record.recv_src_rank.assign(record.num_recv, -1);
  record.recv_src_token.assign(record.num_recv, -1);
  record.fwd_token.assign(num_forwarded, -1);
  record.fwd_mask.assign(num_forwarded, 0);
  DispatchOutputs outputs = job.allocate(record.num_recv);

  p::DispatchPlan plan;
  plan.ctx = ctx;
  plan.counts = counts_of(record);
  plan.x = job.x;
  plan.x_scales = job.x_scales;
  plan.topk_idx = record.topk_idx.data();
  plan.topk_weights = job.topk_weights;
  plan.with_topk = job.cached == nullptr;
  plan.num_tokens = record.num_tokens;
  plan.num_topk = record.num_topk;
  plan.capacity = outputs.capacity;
  plan.recv_x = outputs.recv_x;
  plan.recv_x_scales = outputs.recv_x_scales;
  plan.recv_topk_idx = outputs.recv_topk_idx;
  plan.recv_topk_weights = outputs.recv_topk_weights;
  plan.recv_src_rank = record.recv_src_rank.data();
  plan.recv_src_token = record.recv_src_token.data();
  plan.fwd_token = record.fwd_token.data();
  plan.fwd_mask = record.fwd_mask.data();

  const int N = topo.num_nodes;
  const int L = topo.local_size;
  const int R = topo.num_ranks();
  std::vector<std::unique_ptr<ChannelTask>> tasks;
  for (int c = 0; c < channels; ++c) {
    auto task = std::make_unique<ChannelTask>();
    task->channel = c;
    task->i64.resize(2 * N + L + R);
    task->u64.resize(L);
    std::int64_t* scratch = task->i64.data();
    task->add([role = p::DispatchSender<At, HostIo>(plan, c, scratch)](HostIo& io) mutable { return role.step(io); });
    task->add([role = p::DispatchForwarder<At, HostIo>(plan, c, scratch + N, task->u64.data())](HostIo& io) mutable {
      return role.step(io);
    });
    task->add([role = p::DispatchReceiver<At, HostIo>(plan, c, scratch + 2 * N, scratch + 2 * N + L)](
                  HostIo& io) mutable { return role.step(io); });
    tasks.push_back(std::move(task));
  }
  impl.run_channels(tasks, impl.traffic.dispatch);
  return record;
}

void Engine::combine(const CombineJob& job) {
  Impl& impl = *impl_;
  const DispatchRecord& record = *job.record;
  const p::Topology& topo = impl.topo;
  p::OpContext ctx = impl.context(job.kind, job.hidden, record.num_experts);

  p::CombinePlan plan;
  plan.ctx = ctx;
  plan.counts = counts_of(record);
  plan.y = job.y;
  plan.recv_src_token = record.recv_src_token.data();
  plan.fwd_token = record.fwd_token.data();
  plan.fwd_mask = record.fwd_mask.data();
  plan.topk_idx = record.topk_idx.data();
  plan.num_tokens = record.num_tokens;
  plan.num_topk = record.num_topk;
  plan.out = job.out;

  const int N = topo.num_nodes;
  const int L = topo.local_size;
  std::vector<std::unique_ptr<ChannelTask>> tasks;
  for (int c = 0; c < topo.num_channels; ++c) {
    auto task = std::make_unique<ChannelTask>();
    task->channel = c;
    task->i64.resize(2 * L + 3);
    task->u64.resize(L + N);
    std::int64_t* scratch = task->i64.data();
    std::uint64_t* peeked = task->u64.data();
    task->add([role = p::CombineSender<At, HostIo>(plan, c, scratch, scratch + L)](HostIo& io) mutable {
      return role.step(io);
    });
    task->add([role = p::CombineForwarder<At, HostIo>(plan, c, scratch + 2 * L, peeked)](HostIo& io) mutable {
      return role.step(io);
    });
    task->add([role = p::CombineReceiver<At, HostIo>(plan, c, scratch + 2 * L + 2, peeked + L)](HostIo& io) mutable {
      return role.step(io);
    });
    tasks.push_back(std::move(task));
  }
  impl.run_channels(tasks, impl.traffic.combine);
}

}  // namespace ferry::kernels::host
