#include "ferry/kernels/host/engine.hpp"

#include <algorithm>

#include "channel_runner.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/host/host_io.hpp"
#include "ferry/kernels/protocol/combine_roles.hpp"
#include "ferry/kernels/protocol/dispatch_roles.hpp"
#include "ferry/kernels/protocol/notify_roles.hpp"
#include "ferry/kernels/protocol/plan.hpp"
#include "ferry/kernels/protocol/routing.hpp"
#include "group_runner.hpp"

namespace ferry::kernels::host {

namespace p = protocol;

int engine_threads(const EngineOptions& options, int max_channels) {
  if (options.lanes > 1)
    return std::max(2, 3 * max_channels * std::max(1, options.slices));  // writers: 1 per group
  if (options.thread_per_role) return std::max(2, 3 * max_channels);     // notify: 2 roles; a channel: 3
  return std::clamp(options.workers, 1, max_channels);
}

namespace {

// Tasks of one phase: all roles of a channel in one task, or (thread_per_role) every role a task of its own.
class TaskList {
 public:
  explicit TaskList(bool per_role) : per_role_(per_role) {}

  ChannelTask& task_for(int channel) {
    if (per_role_ || tasks_.empty() || tasks_.back()->channel != channel) {
      tasks_.push_back(std::make_unique<ChannelTask>());
      tasks_.back()->channel = channel;
    }
    return *tasks_.back();
  }
  std::vector<std::unique_ptr<ChannelTask>>& tasks() { return tasks_; }

 private:
  bool per_role_;
  std::vector<std::unique_ptr<ChannelTask>> tasks_;
};

template <class Role>
RoleStep stepper(Role role) {
  return [role](HostIo& io) mutable { return role.step(io); };
}

// Role state shared by the lane groups of one operation (lanes mode); lives until the operation returns.
class Arena {
 public:
  template <class T>
  T* make(std::size_t count) {
    std::shared_ptr<T[]> block(new T[count == 0 ? 1 : count]());
    T* data = block.get();
    blocks_.push_back(std::move(block));
    return data;
  }

 private:
  std::vector<std::shared_ptr<void>> blocks_;
};

// A job that builds Role in each lane from `make` and drives it to its end.
template <class Make>
GroupJob group_job(int channel, std::uint64_t timeout_ns, Make make) {
  return {channel, [make, timeout_ns](LaneIo& io) {
            auto role = make(io);
            return p::drive_role(role, io, timeout_ns);
          }};
}

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
  return {record.recv_count.data(), record.recv_offset.data(),  record.fwd_count.data(),
          record.fwd_offset.data(), record.send_to_rank.data(), record.send_to_node.data()};
}

// This rank's tokens per (target rank, channel) and per (node, channel), from the layout.
void count_sends(const p::Topology& topo, std::int64_t num_tokens, DispatchRecord& record) {
  const int C = topo.num_channels;
  const int R = topo.num_ranks();
  record.send_to_rank.assign(static_cast<std::size_t>(R) * C, 0);
  record.send_to_node.assign(static_cast<std::size_t>(topo.num_nodes) * C, 0);
  for (std::int64_t t = 0; t < num_tokens; ++t) {
    const int channel = p::channel_of_token(num_tokens, C, t);
    const std::uint8_t* row = record.in_rank.data() + t * R;
    for (int node = 0; node < topo.num_nodes; ++node) {
      bool touched = false;
      for (int local = 0; local < topo.local_size; ++local) {
        const int target = topo.rank_of(node, local);
        if (row[target] == 0) continue;
        ++record.send_to_rank[static_cast<std::size_t>(target) * C + channel];
        touched = true;
      }
      if (touched) ++record.send_to_node[static_cast<std::size_t>(node) * C + channel];
    }
  }
}

// Lanes mode: every role of every channel as lane groups, the sliceable ones in `slices` groups sharing
// state. The arena lives in the job closures (shared_ptr) until the last lane has finished.
std::vector<GroupJob> dispatch_jobs(const p::DispatchPlan& plan, int slices, std::uint64_t timeout_ns) {
  using Sender = p::DispatchSender<LaneIo>;
  using Forwarder = p::DispatchForwarder<LaneIo>;
  using Receiver = p::DispatchReceiver<LaneIo>;
  const p::Topology& topo = plan.ctx.topo;
  auto arena = std::make_shared<Arena>();
  std::vector<GroupJob> jobs;
  for (int c = 0; c < topo.num_channels; ++c) {
    auto* items = arena->make<Sender::Item>(Sender::num_items(topo));
    for (int s = 0; s < slices; ++s) {
      jobs.push_back(group_job(c, timeout_ns, [&plan, c, s, slices, items, arena](LaneIo& io) {
        return Sender(io, plan, c, {s, slices}, items);
      }));
    }
    if (topo.num_nodes > 1) {
      auto* forward_items = arena->make<Forwarder::Item>(Forwarder::num_items(topo));
      auto* out_rings = arena->make<p::RingState>(Forwarder::num_out_rings(topo));
      for (int s = 0; s < slices; ++s) {
        jobs.push_back(
            group_job(c, timeout_ns, [&plan, c, s, slices, forward_items, out_rings, arena](LaneIo& io) {
              return Forwarder(io, plan, c, {s, slices}, forward_items, out_rings);
            }));
      }
    }
    auto* rings = arena->make<p::RingState>(Receiver::num_items(topo));
    for (int s = 0; s < slices; ++s) {
      jobs.push_back(group_job(c, timeout_ns, [&plan, c, s, slices, rings, arena](LaneIo& io) {
        return Receiver(io, plan, c, {s, slices}, rings);
      }));
    }
  }
  return jobs;
}

std::vector<GroupJob> combine_jobs(const p::CombinePlan& plan, int slices, std::uint64_t timeout_ns) {
  using Sender = p::CombineSender<LaneIo>;
  using Forwarder = p::CombineForwarder<LaneIo>;
  using Receiver = p::CombineReceiver<LaneIo>;
  const p::Topology& topo = plan.ctx.topo;
  auto arena = std::make_shared<Arena>();
  std::vector<GroupJob> jobs;
  for (int c = 0; c < topo.num_channels; ++c) {
    auto* rings = arena->make<p::RingState>(Sender::num_items(topo));
    for (int s = 0; s < slices; ++s) {
      jobs.push_back(group_job(c, timeout_ns, [&plan, c, s, slices, rings, arena](LaneIo& io) {
        return Sender(io, plan, c, {s, slices}, rings);
      }));
    }
    if (topo.num_nodes > 1) {
      auto* items = arena->make<Forwarder::Item>(Forwarder::num_items(topo));
      auto* in_rings = arena->make<p::RingState>(Forwarder::num_in_rings(topo));
      for (int s = 0; s < slices; ++s) {
        jobs.push_back(group_job(c, timeout_ns, [&plan, c, s, slices, items, in_rings, arena](LaneIo& io) {
          return Forwarder(io, plan, c, {s, slices}, items, in_rings);
        }));
      }
    }
    auto* cursor = arena->make<Receiver::Cursor>(1);
    auto* receive_rings = arena->make<p::RingState>(Receiver::num_rings(topo));
    jobs.push_back(group_job(c, timeout_ns, [&plan, c, cursor, receive_rings, arena](LaneIo& io) {
      return Receiver(io, plan, c, cursor, receive_rings);
    }));
  }
  return jobs;
}

}  // namespace

struct Engine::Impl {
  int rank;
  p::BufferLayout layout;
  RankMemory memory;
  EngineOptions options;
  WorkerPool pool;
  std::vector<std::unique_ptr<RemoteWriter>> writers;  // one per worker
  std::uint32_t operation = 0;
  EngineTraffic traffic;

  Impl(int rank_, const p::BufferLayout& layout_, RankMemory memory_, const EngineOptions& options_,
       int workers)
      : rank(rank_), layout(layout_), memory(memory_), options(options_), pool(workers) {
    for (int w = 0; w < workers; ++w)
      writers.push_back(memory.remote ? memory.remote->open_writer() : nullptr);
  }

  HostIo io_for(int worker, p::Traffic* tally) {
    return HostIo(memory.local, memory.node, writers[worker].get(), tally);
  }

  RunContext run_context() const { return {rank, options.timeout, memory.health}; }

  bool grouped() const { return options.lanes > 1; }
  int slices() const { return std::max(1, options.slices); }
  std::uint64_t timeout_ns() const {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(options.timeout).count());
  }

  void run_jobs(const std::vector<GroupJob>& jobs, p::Traffic& total) {
    if (jobs.size() > writers.size()) {
      fail(Errc::internal, "rank " + std::to_string(rank) + ": " + std::to_string(jobs.size()) +
                               " role groups but " + std::to_string(writers.size()) + " remote writers");
    }
    GroupRun group_run;
    group_run.rank = rank;
    group_run.lanes = options.lanes;
    group_run.timeout = options.timeout;
    group_run.local = memory.local;
    group_run.node = memory.node;
    group_run.health = memory.health;
    for (std::size_t j = 0; j < jobs.size(); ++j) group_run.writers.push_back(writers[j].get());
    run_groups(jobs, group_run, total);
  }

  p::OpContext context(p::PayloadKind kind, std::int64_t hidden, std::int64_t num_experts,
                       const OpSettings& s) {
    const p::Topology& full = layout.params.topo;
    p::OpContext ctx;
    ctx.layout = &layout;
    ctx.topo = full;
    ctx.topo.num_channels = s.channels > 0 ? s.channels : full.num_channels;
    if (ctx.topo.num_channels > full.num_channels) {
      fail(Errc::invalid_argument,
           "rank " + std::to_string(rank) + ": an operation with " + std::to_string(ctx.topo.num_channels) +
               " channels on a buffer laid out for " + std::to_string(full.num_channels));
    }
    ctx.split = {num_experts, num_experts / full.num_ranks()};
    ctx.rank = rank;
    ctx.operation = ++operation;
    ctx.fingerprint = s.fingerprint;
    ctx.kind = kind;
    ctx.hidden = hidden;
    ctx.rdma_chunk = s.rdma_chunk > 0 ? s.rdma_chunk : options.rdma_chunk;
    ctx.nvl_chunk = s.nvl_chunk > 0 ? s.nvl_chunk : options.nvl_chunk;
    return ctx;
  }

  // A message of `stride` bytes must leave room for a whole chunk in every ring of its families.
  void check_windows(const p::OpContext& ctx, std::size_t stride, p::RingKind rdma, p::RingKind nvl) const {
    const std::uint64_t rdma_slots = ctx.family(rdma).window_slots(stride);
    const std::uint64_t nvl_slots = ctx.family(nvl).window_slots(stride);
    if ((ctx.topo.num_nodes > 1 && rdma_slots < static_cast<std::uint64_t>(ctx.rdma_chunk)) ||
        nvl_slots < static_cast<std::uint64_t>(ctx.nvl_chunk)) {
      fail(Errc::invalid_argument,
           "rank " + std::to_string(rank) + ": messages of " + std::to_string(stride) + " bytes leave " +
               std::to_string(rdma_slots) + " fabric / " + std::to_string(nvl_slots) +
               " node ring slots, fewer than the chunks (" + std::to_string(ctx.rdma_chunk) + " / " +
               std::to_string(ctx.nvl_chunk) + ")");
    }
  }

  // Task t runs on worker t % W; the calling thread is worker 0.
  void run(std::vector<std::unique_ptr<ChannelTask>>& tasks, p::Traffic& total) {
    PhaseState state;
    const int workers = pool.size();
    std::vector<p::Traffic> tallies(workers);
    pool.run([&](int worker) {
      std::vector<ChannelTask*> mine;
      for (std::size_t t = worker; t < tasks.size(); t += workers) mine.push_back(tasks[t].get());
      if (mine.empty()) return;
      HostIo io = io_for(worker, &tallies[worker]);
      run_tasks(mine, io, run_context(), state);
    });
    for (const p::Traffic& tally : tallies) total.add(tally);
    state.rethrow();
  }

  void notify(const p::OpContext& ctx, int num_topk, DispatchRecord& record) {
    const p::Topology& topo = ctx.topo;
    const int R = topo.num_ranks();
    record.recv_count.assign(static_cast<std::size_t>(R) * topo.num_channels, 0);
    record.fwd_count.assign(static_cast<std::size_t>(topo.num_nodes) * topo.num_channels, 0);
    p::NotifyPlan plan;
    plan.ctx = ctx;
    plan.num_topk = num_topk;
    plan.send_to_rank = record.send_to_rank.data();
    plan.send_to_node = record.send_to_node.data();
    plan.recv_count = record.recv_count.data();
    plan.fwd_count = record.fwd_count.data();

    if (grouped()) {
      Arena arena;
      auto* sender_states = arena.make<p::RingState>(R);
      auto* sent = arena.make<std::uint8_t>(R);
      auto* receiver_states = arena.make<p::RingState>(R);
      auto* received = arena.make<std::uint8_t>(R);
      const std::vector<GroupJob> jobs = {
          group_job(-1, timeout_ns(),
                    [&plan, sender_states, sent](LaneIo& io) {
                      return p::NotifySender<LaneIo>(io, plan, sender_states, sent);
                    }),
          group_job(-1, timeout_ns(), [&plan, receiver_states, received](LaneIo& io) {
            return p::NotifyReceiver<LaneIo>(io, plan, receiver_states, received);
          })};
      run_jobs(jobs, traffic.notify);
      return;
    }
    p::Traffic unused;
    HostIo setup = io_for(0, &unused);
    TaskList list(options.thread_per_role);
    ChannelTask& sender = list.task_for(-1);
    sender.add(stepper(p::NotifySender<HostIo>(setup, plan, sender.make_scratch<p::RingState>(R),
                                               sender.make_scratch<std::uint8_t>(R))));
    ChannelTask& receiver = list.task_for(-1);
    receiver.add(stepper(p::NotifyReceiver<HostIo>(setup, plan, receiver.make_scratch<p::RingState>(R),
                                                   receiver.make_scratch<std::uint8_t>(R))));
    run(list.tasks(), traffic.notify);
  }
};

Engine::Engine(int rank, const p::BufferLayout& layout, RankMemory memory, const EngineOptions& options) {
  const p::Topology& topo = layout.params.topo;
  if (memory.bytes < layout.total_bytes) {
    fail(Errc::invalid_argument, "rank " + std::to_string(rank) + "'s buffer has " +
                                     std::to_string(memory.bytes) + " bytes but the config needs " +
                                     std::to_string(layout.total_bytes));
  }
  if (topo.num_nodes > 1 && memory.remote == nullptr) {
    fail(Errc::invalid_argument, "rank " + std::to_string(rank) + " has peers on " +
                                     std::to_string(topo.num_nodes - 1) +
                                     " other nodes but no remote memory");
  }
  impl_ = std::make_unique<Impl>(rank, layout, memory, options, engine_threads(options, topo.num_channels));
}

Engine::~Engine() = default;

int Engine::rank() const {
  return impl_->rank;
}
int Engine::workers() const {
  return impl_->pool.size();
}
const EngineTraffic& Engine::traffic() const {
  return impl_->traffic;
}

DispatchRecord Engine::dispatch(const DispatchJob& job) {
  Impl& impl = *impl_;
  OpSettings settings = job.settings;
  if (job.cached != nullptr && settings.channels == 0) settings.channels = job.cached->channels;
  const p::OpContext ctx = impl.context(job.kind, job.hidden, job.num_experts, settings);
  const p::Topology& topo = ctx.topo;
  const int C = topo.num_channels;
  const int N = topo.num_nodes;
  const int R = topo.num_ranks();

  DispatchRecord record;
  if (job.cached != nullptr) {
    const DispatchRecord& cached = *job.cached;
    if (cached.channels != C) {
      fail(Errc::invalid_argument, "rank " + std::to_string(impl.rank) + ": a cached dispatch must use the " +
                                       std::to_string(cached.channels) +
                                       " channels of the dispatch it repeats, not " + std::to_string(C));
    }
    record = cached;
    record.recv_src_rank.clear();
    record.recv_src_token.clear();
    record.fwd_token.clear();
    record.fwd_mask.clear();
  } else {
    record.channels = C;
    record.num_tokens = job.num_tokens;
    record.num_topk = job.num_topk;
    record.num_experts = job.num_experts;
    record.topk_idx.assign(job.topk_idx, job.topk_idx + job.num_tokens * job.num_topk);
    record.in_rank.assign(job.in_rank, job.in_rank + job.num_tokens * R);
    count_sends(topo, job.num_tokens, record);
    impl.notify(ctx, job.num_topk, record);
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
  plan.with_topk = job.cached == nullptr;
  plan.format = p::dispatch_format(job.kind, job.hidden, plan.with_topk ? record.num_topk : 0);
  impl.check_windows(ctx, plan.format.stride, p::RingKind::dispatch_rdma, p::RingKind::dispatch_nvl);
  plan.in_rank = record.in_rank.data();
  plan.x = job.x;
  plan.x_scales = job.x_scales;
  plan.topk_idx = record.topk_idx.data();
  plan.topk_weights = job.topk_weights;
  plan.num_tokens = record.num_tokens;
  plan.num_topk = record.num_topk;
  plan.capacity = outputs.capacity;
  plan.record_capacity = record.num_recv;
  plan.fwd_capacity = num_forwarded;
  plan.recv_x = outputs.recv_x;
  plan.recv_x_scales = outputs.recv_x_scales;
  plan.recv_topk_idx = outputs.recv_topk_idx;
  plan.recv_topk_weights = outputs.recv_topk_weights;
  plan.recv_src_rank = record.recv_src_rank.data();
  plan.recv_src_token = record.recv_src_token.data();
  plan.fwd_token = record.fwd_token.data();
  plan.fwd_mask = record.fwd_mask.data();

  if (impl.grouped()) {
    impl.run_jobs(dispatch_jobs(plan, impl.slices(), impl.timeout_ns()), impl.traffic.dispatch);
    return record;
  }
  using Sender = p::DispatchSender<HostIo>;
  using Forwarder = p::DispatchForwarder<HostIo>;
  using Receiver = p::DispatchReceiver<HostIo>;
  p::Traffic unused;
  HostIo setup = impl.io_for(0, &unused);
  const p::RoleSlice all;
  TaskList list(impl.options.thread_per_role);
  for (int c = 0; c < C; ++c) {
    ChannelTask& send = list.task_for(c);
    send.add(stepper(Sender(setup, plan, c, all, send.make_scratch<Sender::Item>(Sender::num_items(topo)))));
    if (N > 1) {
      ChannelTask& forward = list.task_for(c);
      forward.add(stepper(Forwarder(setup, plan, c, all, forward.make_scratch<Forwarder::Item>(N - 1),
                                    forward.make_scratch<p::RingState>(Forwarder::num_out_rings(topo)))));
    }
    ChannelTask& receive = list.task_for(c);
    receive.add(stepper(
        Receiver(setup, plan, c, all, receive.make_scratch<p::RingState>(Receiver::num_items(topo)))));
  }
  impl.run(list.tasks(), impl.traffic.dispatch);
  return record;
}

void Engine::combine(const CombineJob& job) {
  Impl& impl = *impl_;
  const DispatchRecord& record = *job.record;
  OpSettings settings = job.settings;
  if (settings.channels == 0) settings.channels = record.channels;
  if (settings.channels != record.channels) {
    fail(Errc::invalid_argument, "rank " + std::to_string(impl.rank) + ": combine must use the " +
                                     std::to_string(record.channels) + " channels of its dispatch, not " +
                                     std::to_string(settings.channels));
  }
  const p::OpContext ctx = impl.context(job.kind, job.hidden, record.num_experts, settings);
  const p::Topology& topo = ctx.topo;

  p::CombinePlan plan;
  plan.ctx = ctx;
  plan.counts = counts_of(record);
  const bool with_weights = job.out_weights != nullptr;
  plan.format = p::combine_format(job.kind, job.hidden, with_weights ? record.num_topk : 0);
  impl.check_windows(ctx, plan.format.stride, p::RingKind::combine_rdma, p::RingKind::combine_nvl);
  plan.y = job.y;
  plan.y_weights = with_weights ? job.y_weights : nullptr;
  plan.recv_src_token = record.recv_src_token.data();
  plan.fwd_token = record.fwd_token.data();
  plan.fwd_mask = record.fwd_mask.data();
  plan.capacity = static_cast<std::int64_t>(record.recv_src_token.size());
  plan.fwd_capacity = static_cast<std::int64_t>(record.fwd_token.size());
  plan.in_rank = record.in_rank.data();
  plan.num_tokens = record.num_tokens;
  plan.out = job.out;
  plan.bias = job.bias;
  plan.out_weights = job.out_weights;

  if (impl.grouped()) {
    impl.run_jobs(combine_jobs(plan, impl.slices(), impl.timeout_ns()), impl.traffic.combine);
    return;
  }
  using Sender = p::CombineSender<HostIo>;
  using Forwarder = p::CombineForwarder<HostIo>;
  using Receiver = p::CombineReceiver<HostIo>;
  p::Traffic unused;
  HostIo setup = impl.io_for(0, &unused);
  const p::RoleSlice all;
  TaskList list(impl.options.thread_per_role);
  for (int c = 0; c < topo.num_channels; ++c) {
    ChannelTask& send = list.task_for(c);
    send.add(stepper(Sender(setup, plan, c, all, send.make_scratch<p::RingState>(Sender::num_items(topo)))));
    if (topo.num_nodes > 1) {
      ChannelTask& forward = list.task_for(c);
      forward.add(
          stepper(Forwarder(setup, plan, c, all, forward.make_scratch<Forwarder::Item>(topo.num_nodes - 1),
                            forward.make_scratch<p::RingState>(Forwarder::num_in_rings(topo)))));
    }
    ChannelTask& receive = list.task_for(c);
    receive.add(stepper(Receiver(setup, plan, c, receive.make_scratch<Receiver::Cursor>(1),
                                 receive.make_scratch<p::RingState>(Receiver::num_rings(topo)))));
  }
  impl.run(list.tasks(), impl.traffic.combine);
}

}  // namespace ferry::kernels::host
