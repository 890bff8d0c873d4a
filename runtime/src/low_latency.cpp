// LowLatencyBuffer (ferry/low_latency.hpp) on the host executor (kernels/host/low_latency_engine.hpp).
//
// Which operation runs where: an operation's send half runs on the caller's thread (hook and plain calls) or
// on the buffer's queue thread (async_finish), its receive half right after it, in the hook, or on the queue.
// This file keeps the order: operation numbers in issue order, two buffers in turn, a third operation refused
// while the oldest still holds its buffer with a hook nobody has called, and a plain or hook call waits for
// an async operation still running on the buffer it needs.
#include "ferry/low_latency.hpp"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "ferry/core/error.hpp"
#include "ferry/kernels/host/low_latency_engine.hpp"
#include "group_transport.hpp"
#include "local_cluster.hpp"
#include "low_latency_checks.hpp"
#include "low_latency_device.hpp"
#include "operation_queue.hpp"

namespace ferry {

namespace p = kernels::protocol;
namespace h = kernels::host;

namespace detail {

struct LowLatencyRecord {
  const LowLatencyBuffer::Impl* owner = nullptr;
  std::uint64_t generation = 0;  // cleans of the owner before the dispatch
  p::LowLatencyShape shape;
  std::int64_t num_tokens = 0;
  int num_topk = 0;
  std::uint32_t operation = 0;
  std::vector<std::int64_t> topk_idx;    // [T * K]
  std::vector<std::int32_t> slot;        // [T * K]
  std::vector<std::int32_t> send_count;  // [E]
  // Device::cuda: the routing copied to the GPU, and the slots and counts its kernels compute from it.
  Tensor device_topk_idx;                 // int64 [T, K]
  Tensor device_slot;                     // int32 [T, K]
  Tensor device_send_count;               // int32 [E]
  Tensor src_info;                        // int32 [E/R, R*T]
  Tensor layout_range;                    // int64 [E/R, R]
  LowLatencyDevice::Capture capture;      // the CUDA graph capture the dispatch was made in, if any
  std::atomic<bool> received{false};      // the dispatch's receive half has run
  std::weak_ptr<LowLatencyReceive> hook;  // its hook, when issued with one (the hook owns the record)
  std::optional<Event> event;             // async_finish
};

// A receive half waiting for its hook. Its lock is never held while the receive runs (the receive takes the
// buffer's lock, which is held while a hook's state is read).
struct LowLatencyReceive {
  enum class State : std::uint8_t { waiting, running, done };
  std::mutex mutex;
  State state = State::waiting;
  std::function<void()> run;

  bool pending() {
    std::lock_guard lock(mutex);
    return state != State::done;
  }
};

}  // namespace detail

// ---- handle and hook ----

std::int64_t LowLatencyHandle::num_max_dispatch_tokens_per_rank() const {
  return record_ ? record_->shape.max_tokens : 0;
}
std::int64_t LowLatencyHandle::hidden() const {
  return record_ ? record_->shape.hidden : 0;
}
std::int64_t LowLatencyHandle::num_experts() const {
  return record_ ? record_->shape.num_experts : 0;
}
std::int64_t LowLatencyHandle::num_tokens() const {
  return record_ ? record_->num_tokens : 0;
}
int LowLatencyHandle::num_topk() const {
  return record_ ? record_->num_topk : 0;
}
const Tensor& LowLatencyHandle::packed_recv_src_info() const {
  static const Tensor empty;
  return record_ ? record_->src_info : empty;
}
const Tensor& LowLatencyHandle::packed_recv_layout_range() const {
  static const Tensor empty;
  return record_ ? record_->layout_range : empty;
}

void LowLatencyHook::operator()() const {
  using State = detail::LowLatencyReceive::State;
  if (!receive_)
    fail(Errc::invalid_argument, "this LowLatencyHook is empty: the call had no return_recv_hook");
  std::function<void()> run;
  {
    std::lock_guard lock(receive_->mutex);
    if (receive_->state != State::waiting)
      fail(Errc::invalid_argument, "this low-latency receive hook has already been called");
    receive_->state = State::running;
    run = receive_->run;
  }
  struct Done {
    detail::LowLatencyReceive& receive;
    ~Done() {
      std::lock_guard lock(receive.mutex);
      receive.state = State::done;
    }
  } done{*receive_};
  run();
}

std::size_t get_low_latency_rdma_size_hint(std::int64_t num_max_dispatch_tokens_per_rank, std::int64_t hidden,
                                           int num_ranks, std::int64_t num_experts) {
  if (num_ranks < 1) fail(Errc::invalid_argument, "num_ranks must be >= 1, not " + std::to_string(num_ranks));
  const p::LowLatencyShape shape =
      check_low_latency_shape(num_max_dispatch_tokens_per_rank, hidden, num_ranks, num_experts, false, 0);
  return p::make_low_latency_layout(shape).total_bytes;
}

// ---- the buffer ----

struct LowLatencyBuffer::Impl {
  int rank = 0;
  int num_nodes = 1;
  int local_size = 1;
  LowLatencyConfig config;
  LocalCluster::Impl* cluster = nullptr;
  // The group's watch on the store (Group::member_watch): its lost_words() name the ranks known dead, which
  // every wait masks at once (LowLatencyContext::gone). Null on a LocalCluster or a one-rank group. Declared
  // before the transport, whose fabric reads it, so it goes after the transport.
  std::shared_ptr<transport::StoreWatch> watch;
  std::unique_ptr<GroupTransport> transport;
  std::unique_ptr<h::LowLatencyEngine> engine;
  std::unique_ptr<std::uint64_t[]> mask;  // [R], read and written through atomic_ref
  std::unique_ptr<OperationQueue> queue;  // stopped first
  // Device::cuda instead of transport, engine, mask and queue: the GPU side (low_latency_device.hpp).
  std::unique_ptr<LowLatencyDevice> device;

  // What an operation left on its buffer.
  struct Use {
    std::uint32_t operation = 0;
    bool combine = false;
    std::shared_ptr<detail::LowLatencyReceive> hook;
    std::optional<Event> event;
  };

  mutable std::mutex mutex;  // guards everything below
  std::optional<p::LowLatencyShape> shape;
  std::uint32_t next_operation = 0;
  std::uint64_t generation = 0;  // cleans so far
  std::optional<Use> uses[p::kLowLatencyBuffers];
  std::string failure;  // the first failed operation's error, until a clean
  // Device::cuda: a call was captured into a CUDA graph since the last clean. Each launch of a graph numbers
  // its operations on the GPU, so the host's count may no longer give the GPU's buffer parity, which zero
  // copy's staging address needs (the kernels follow the GPU's count; nothing else depends on the two
  // agreeing).
  bool captured_since_clean = false;
  LowLatencyStats stats;

  int num_ranks() const { return num_nodes * local_size; }
  std::byte* region() const { return device ? device->region() : engine->region(); }

  // Under the lock: zero copy's x must be the combine staging of the next operation's buffer (what
  // get_next_low_latency_combine_buffer returned right before).
  void check_zero_copy_staging(const TensorView& x, const p::LowLatencyShape& shape) const {
    const p::LowLatencyLayout layout = p::make_low_latency_layout(shape);
    const std::byte* staging =
        region() + layout.combine_staging(static_cast<int>(next_operation % p::kLowLatencyBuffers), 0, 0);
    if (x.data() != staging) {
      fail(Errc::invalid_argument,
           "zero_copy: x is not the staging of this combine's buffer: pass what "
           "get_next_low_latency_combine_buffer returned right before this call");
    }
    refuse_zero_copy_after_capture();
  }
  void refuse_zero_copy_after_capture() const {
    if (captured_since_clean) {
      fail(Errc::invalid_argument,
           "zero copy after a call was captured into a CUDA graph: the graph's launches number operations on "
           "the GPU, so the host no longer knows which staging the next combine sends from; call "
           "clean_low_latency_buffer first");
    }
  }
  const std::uint64_t* gone() const { return watch ? watch->lost_words() : nullptr; }

  p::Topology topology() const {
    p::Topology topo;
    topo.num_nodes = num_nodes;
    topo.local_size = local_size;
    return topo;
  }

  p::LowLatencyContext context(const p::LowLatencyShape& of, std::uint32_t operation) const {
    p::LowLatencyContext ctx;
    ctx.layout = p::make_low_latency_layout(of);
    ctx.topo = topology();
    ctx.rank = rank;
    p::set_operation(ctx, operation);
    ctx.mask_after_ns = static_cast<std::uint64_t>(config.timeout.count());
    ctx.mask = device ? device->mask() : mask.get();
    ctx.gone = device ? device->gone() : gone();
    return ctx;
  }

  std::string describe_use(const Use& use) const {
    return "operation " + std::to_string(use.operation) + " (" + (use.combine ? "combine" : "dispatch") + ")";
  }

  // Under `mutex`: after a failed operation the host's count may be ahead of what ran, so nothing is numbered
  // from it until a clean.
  void refuse_after_failure() const {
    if (!failure.empty()) {
      fail(Errc::invalid_argument, "rank " + std::to_string(rank) +
                                       ": an earlier low-latency operation failed (" + failure +
                                       "); call clean_low_latency_buffer to start again");
    }
  }

  // Under `mutex`: the next operation's number, after the checks that refuse it. Returns the event of an
  // async operation still running on the buffer it needs (the caller waits for it outside the lock, unless
  // the new operation is async too: the queue keeps the order).
  std::uint32_t claim(const p::LowLatencyShape& wanted, bool combine, bool async,
                      std::optional<Event>& wait_for) {
    refuse_after_failure();
    if (shape && !(*shape == wanted)) {
      fail(Errc::invalid_argument,
           "rank " + std::to_string(rank) + ": this call's shape (" + std::to_string(wanted.max_tokens) +
               " tokens, hidden " + std::to_string(wanted.hidden) + ", " +
               std::to_string(wanted.num_experts) + " experts) differs from the buffer's (" +
               std::to_string(shape->max_tokens) + ", " + std::to_string(shape->hidden) + ", " +
               std::to_string(shape->num_experts) +
               "): call clean_low_latency_buffer with the new shape first");
    }
    const std::uint32_t operation = next_operation;
    const int buffer = static_cast<int>(operation % p::kLowLatencyBuffers);
    if (uses[buffer]) {
      const Use& held = *uses[buffer];
      if (held.hook && held.hook->pending()) {
        const Use& other = *uses[1 - buffer];
        fail(Errc::invalid_argument, "rank " + std::to_string(rank) + ": two low-latency results are held (" +
                                         describe_use(held) + " and " + describe_use(other) +
                                         "), and a third operation needs the buffer of " +
                                         describe_use(held) + ": call its receive hook first");
      }
      if (held.event && !held.event->test() && !async) wait_for = held.event;
    }
    if (!shape) {
      shape = wanted;
      stats.local_expert_recv.assign(wanted.local_experts(), 0);
    }
    ++next_operation;
    uses[buffer] = Use{operation, combine, nullptr, std::nullopt};
    return operation;
  }

  void set_use(std::uint32_t operation, bool combine, std::shared_ptr<detail::LowLatencyReceive> hook,
               std::optional<Event> event) {
    std::lock_guard lock(mutex);
    std::optional<Use>& use = uses[operation % p::kLowLatencyBuffers];
    if (use && use->operation == operation) *use = Use{operation, combine, std::move(hook), std::move(event)};
  }

  // Runs part of an operation; a failure makes every later operation fail until a clean.
  template <class Body>
  void guarded(Body body) {
    try {
      body();
    } catch (const std::exception& error) {
      std::lock_guard lock(mutex);
      if (failure.empty()) failure = error.what();
      throw;
    }
  }

  // How the halves of an operation run (see the file comment); fills the result's event and hook.
  void run(bool async, bool hook_mode, std::function<void()> send, std::function<void()> receive,
           std::uint32_t operation, bool combine, Event& event, LowLatencyHook& hook,
           const std::optional<Event>& wait_for) {
    if (async) {
      event = queue->submit([this, send, receive] {
        guarded(send);
        guarded(receive);
      });
      set_use(operation, combine, nullptr, event);
      return;
    }
    if (wait_for) wait_for->wait();
    guarded(send);
    if (!hook_mode) {
      guarded(receive);
      return;
    }
    auto pending = std::make_shared<detail::LowLatencyReceive>();
    pending->run = [this, receive] { guarded(receive); };
    hook.receive_ = pending;
    set_use(operation, combine, pending, std::nullopt);
  }

  // Device::cuda: both halves enqueued on the buffer's stream after the caller's stream, which then waits for
  // them (async: it does not; the event completes after the receive half); with a hook, the caller's stream
  // waits for the send half (which reads the caller's tensors), and the hook enqueues the receive half the
  // same way. The GPU orders a buffer's operations, so nothing here waits for an earlier one.
  void run_on_device(bool async, bool hook_mode, std::function<void()> send, std::function<void()> receive,
                     std::uint32_t operation, bool combine, Event& event, LowLatencyHook& hook, void* caller,
                     LowLatencyDevice::Capture capture) {
    guarded([&] {
      device->follow(caller);
      send();
      if (hook_mode) {
        event = device->event(capture.active);
        device->lead(caller);
        return;
      }
      receive();
      event = device->event(capture.active);
      if (!async) device->lead(caller);
    });
    if (!hook_mode) {
      set_use(operation, combine, nullptr, event);
      return;
    }
    auto pending = std::make_shared<detail::LowLatencyReceive>();
    pending->run = [this, receive, caller, capture] {
      guarded([&] {  // refused, the receive half is lost (the hook is spent): the buffer needs a clean
        const LowLatencyDevice::Capture now = device->check_stream(caller);
        if (now.active != capture.active || now.id != capture.id) {
          fail(Errc::invalid_argument,
               capture.active
                   ? "the receive hook of a call captured into a CUDA graph runs in the same capture "
                     "(its send half runs only when the graph is launched)"
                   : "the receive hook of a call made outside a CUDA graph capture cannot run inside "
                     "one (its send half has been enqueued already)");
        }
        device->follow(caller);
        receive();
        device->lead(caller);
      });
    };
    hook.receive_ = pending;
    set_use(operation, combine, pending, std::nullopt);
  }

  // Waits for the async operations on `buffers` (both: -1) and refuses when a hook there is pending.
  // `wait_events` false: only the hooks are checked (on the GPU the buffer's stream already orders what is
  // enqueued next after the earlier operations, and waiting would block the host on the GPU).
  void settle(const char* what, int buffer = -1, bool wait_events = true) {
    std::vector<Event> running;
    {
      std::lock_guard lock(mutex);
      for (int b = 0; b < p::kLowLatencyBuffers; ++b) {
        const std::optional<Use>& use = uses[b];
        if (!use || (buffer >= 0 && b != buffer)) continue;
        if (use->hook && use->hook->pending()) {
          fail(Errc::invalid_argument, std::string(what) + ": " + describe_use(*use) +
                                           " still holds its buffer: call its receive hook first");
        }
        if (use->event && wait_events) running.push_back(*use->event);
      }
    }
    for (const Event& event : running) {
      try {
        event.wait();
      } catch (const std::exception&) {  // the operation reported its own failure
      }
    }
  }

  void add_dispatch_stats(const p::LowLatencyDispatchPlan& plan, const LowLatencyDispatchOptions& options) {
    const std::int64_t L = plan.ctx.local_experts();
    const int R = plan.ctx.num_ranks();
    std::lock_guard lock(mutex);
    stats.operations += 1;
    stats.dispatch_wait_ns.resize(R, 0);
    stats.local_expert_recv.resize(L, 0);
    for (std::int64_t e = 0; e < L; ++e) {
      stats.local_expert_recv[e] += plan.recv_count[e];
      if (!options.cumulative_local_expert_recv_stats.empty())
        options.cumulative_local_expert_recv_stats.data_as<std::int32_t>()[e] += plan.recv_count[e];
      for (int s = 0; s < R; ++s) {
        const std::int64_t waited = plan.wait_ns[e * R + s];
        stats.dispatch_wait_ns[s] += waited;
        if (!options.dispatch_wait_recv_cost_stats.empty())
          options.dispatch_wait_recv_cost_stats.data_as<std::int64_t>()[s] += waited;
      }
    }
  }

  void add_combine_stats(const p::LowLatencyCombinePlan& plan, const TensorView& caller) {
    const std::int64_t E = plan.ctx.layout.E();
    std::lock_guard lock(mutex);
    stats.operations += 1;
    stats.combine_wait_ns.resize(plan.ctx.num_ranks(), 0);
    for (std::int64_t e = 0; e < E; ++e) {
      const int source = plan.ctx.rank_of_expert(e);
      stats.combine_wait_ns[source] += plan.wait_ns[e];
      if (!caller.empty()) caller.data_as<std::int64_t>()[source] += plan.wait_ns[e];
    }
  }
};

namespace {

std::size_t page_rounded(std::size_t bytes) {
  return (bytes + 4095) / 4096 * 4096;
}

void check_config(const LowLatencyConfig& config) {
  if (config.num_rdma_bytes == 0) {
    fail(Errc::invalid_argument,
         "LowLatencyConfig::num_rdma_bytes is 0: size it with get_low_latency_rdma_size_hint");
  }
  if (config.timeout <= Duration::zero())
    fail(Errc::invalid_argument, "LowLatencyConfig::timeout must be > 0");
  if (config.host_lanes < 1 || config.host_lanes > 64) {
    fail(Errc::invalid_argument,
         "LowLatencyConfig::host_lanes must be in [1, 64], not " + std::to_string(config.host_lanes));
  }
}

h::LowLatencyEngineOptions engine_options(const LowLatencyConfig& config) {
  h::LowLatencyEngineOptions options;
  options.lanes = config.host_lanes;
  return options;
}

// Every rank must register the same number of bytes: compare them now, by name.
void check_same_bytes(Group& group, std::size_t bytes) {
  std::vector<std::uint8_t> mine(sizeof bytes);
  std::memcpy(mine.data(), &bytes, sizeof bytes);
  const auto all = group.all_gather("ferry/low_latency/bytes", mine);
  for (std::size_t r = 0; r < all.size(); ++r) {
    std::size_t theirs = 0;
    std::memcpy(&theirs, all[r].data(), sizeof theirs);
    if (theirs != bytes) {
      fail(Errc::invalid_argument, "rank " + std::to_string(group.rank()) +
                                       " builds its LowLatencyBuffer with " + std::to_string(bytes) +
                                       " bytes but rank " + std::to_string(r) + " with " +
                                       std::to_string(theirs) + ": every rank must use the same");
    }
  }
}

}  // namespace

LowLatencyBuffer::LowLatencyBuffer(Group& group, const LowLatencyConfig& config, Device device)
    : impl_(std::make_unique<Impl>()) {
  check_config(config);
  if (device != Device::host && device != Device::cuda)
    fail(Errc::invalid_argument, "a LowLatencyBuffer runs on Device::host or Device::cuda");
  if (device == Device::cuda && config.host_lanes != 1)
    fail(Errc::invalid_argument,
         "LowLatencyConfig::host_lanes is for the host executor: leave it 1 on the GPU");
  Impl& impl = *impl_;
  impl.config = config;
  impl.config.num_rdma_bytes = page_rounded(config.num_rdma_bytes);
  impl.rank = group.rank();
  impl.num_nodes = group.num_nodes();
  impl.local_size = group.local_size();
  check_same_bytes(group, impl.config.num_rdma_bytes);
  // The words come first in the region (check_low_latency_shape bounds them per shape). The region is sized
  // for the worst case (every token of every rank on one expert) and mostly never written: its pages come on
  // first touch.
  // A dead rank is skipped, not waited for (docs/reliability.md, "A dead rank in the low-latency mode"): the
  // store names it to every survivor within moments (their waits mask it at once), and the fabric gives up
  // on it alone (its writes complete without sending) instead of failing the survivors' operations.
  // On a sub-group, a watch of its own: the store counts its lost ranks in its numbering.
  impl.watch = group.member_watch();
  if (device == Device::cuda) {
    impl.device = std::make_unique<LowLatencyDevice>(group, impl.config, impl.gone());
    return;
  }
  // Isolation only with the store's news: a fabric that gave a dead rank up silently, while the survivors
  // learn of it by their timeouts alone, lets one survivor outwait another into masking a live rank
  // (docs/reliability.md); without the news a dead rank of another node fails the operation by name.
  impl.transport = std::make_unique<GroupTransport>(group, impl.config.num_rdma_bytes, 0, 1, config.timeout,
                                                    "ferry-lowlat", false, impl.gone() != nullptr);
  impl.engine = std::make_unique<h::LowLatencyEngine>(impl.rank, impl.topology(), impl.transport->memory(),
                                                      engine_options(config));
  impl.mask = std::make_unique<std::uint64_t[]>(impl.num_ranks());
  impl.queue = std::make_unique<OperationQueue>(impl.rank);
}

LowLatencyBuffer::LowLatencyBuffer(LocalCluster& cluster, int rank, const LowLatencyConfig& config)
    : impl_(std::make_unique<Impl>()) {
  check_config(config);
  Impl& impl = *impl_;
  LocalCluster::Impl& world = *cluster.impl_;
  impl.config = config;
  impl.config.num_rdma_bytes = page_rounded(config.num_rdma_bytes);
  kernels::host::LocalWorld& regions = world.claim_low_latency(rank, impl.config.num_rdma_bytes);
  impl.cluster = &world;
  impl.rank = rank;
  impl.num_nodes = world.num_nodes;
  impl.local_size = world.local_size;
  try {
    impl.engine = std::make_unique<h::LowLatencyEngine>(rank, impl.topology(), regions.memory(rank),
                                                        engine_options(config));
  } catch (...) {
    world.release_low_latency(rank);
    throw;
  }
  impl.mask = std::make_unique<std::uint64_t[]>(impl.num_ranks());
  impl.queue = std::make_unique<OperationQueue>(rank);
}

LowLatencyBuffer::~LowLatencyBuffer() {
  // A hook that outlives its buffer fails by name instead of touching what is gone.
  for (auto& use : impl_->uses) {
    if (!use || !use->hook) continue;
    std::lock_guard lock(use->hook->mutex);
    if (use->hook->state != detail::LowLatencyReceive::State::waiting) continue;
    use->hook->run = [] {
      fail(Errc::invalid_argument, "this receive hook's LowLatencyBuffer was destroyed before the hook ran");
    };
  }
  impl_->queue.reset();
  impl_->engine.reset();
  impl_->device.reset();
  impl_->transport.reset();
  if (impl_->cluster) impl_->cluster->release_low_latency(impl_->rank);
}

int LowLatencyBuffer::rank() const {
  return impl_->rank;
}
int LowLatencyBuffer::num_ranks() const {
  return impl_->num_ranks();
}
std::size_t LowLatencyBuffer::num_rdma_bytes() const {
  return impl_->config.num_rdma_bytes;
}

namespace {

// What a dispatch plan takes from the call, on either executor (the arrays are the caller's to fill).
std::shared_ptr<p::LowLatencyDispatchPlan> dispatch_plan(const LowLatencyBuffer::Impl& impl,
                                                         const p::LowLatencyShape& shape,
                                                         std::uint32_t operation,
                                                         const LowLatencyDispatchOptions& options,
                                                         const TensorView& x, int K) {
  auto plan = std::make_shared<p::LowLatencyDispatchPlan>();
  plan->ctx = impl.context(shape, operation);
  plan->message = p::low_latency_message(options.use_fp8, shape.hidden);
  plan->round_scale = options.round_scale;
  plan->ue8m0 = options.use_ue8m0;
  plan->tag = p::low_latency_tag(operation, false);
  plan->shape_check = p::low_latency_shape_check(shape, options.use_fp8);
  plan->x = x.data_as<const std::uint16_t>();
  plan->num_tokens = x.size(0);
  plan->num_topk = K;
  return plan;
}

// What a combine plan takes from the call and its dispatch's record, on either executor (the arrays are the
// caller's to fill).
std::shared_ptr<p::LowLatencyCombinePlan> combine_plan(const LowLatencyBuffer::Impl& impl,
                                                       const detail::LowLatencyRecord& record,
                                                       std::uint32_t operation, const TensorView& x) {
  auto plan = std::make_shared<p::LowLatencyCombinePlan>();
  plan->ctx = impl.context(record.shape, operation);
  plan->tag = p::low_latency_tag(operation, true);
  plan->x = x.data_as<const std::uint16_t>();
  plan->layout_range = record.layout_range.data_as<const std::int64_t>();
  plan->num_tokens = record.num_tokens;
  plan->num_topk = record.num_topk;
  return plan;
}

}  // namespace

// ---- Device::cuda (low_latency_device.hpp): the same operations with device arrays ----

namespace {

// The start and end of a dispatch or combine on the GPU. Before anything of the call is claimed: the caller's
// stream checked and its capture taken, async_finish refused in a capture, the memory of graphs that are
// gone dropped, a capture noted (zero copy waits for a clean), an earlier operation's failure raised. When
// the call ends, returned or thrown, a captured call's memory goes to the graph being captured (the graph
// may address what the call enqueued before it threw).
class DeviceCall {
 public:
  DeviceCall(LowLatencyBuffer::Impl& impl, void* caller, bool async_finish)
      : device_(*impl.device), caller_(caller), capture_(device_.check_stream(caller)) {
    if (capture_.active && async_finish) {
      // async_finish leaves the caller's stream free of the call: in a capture, the buffer's stream would
      // never rejoin it (cudaStreamEndCapture fails), and the Event means nothing before the graph is
      // launched.
      fail(Errc::invalid_argument,
           "async_finish inside a CUDA graph capture: the graph orders the call on its stream; capture it "
           "without async_finish (return_recv_hook works, with the hook called in the same capture)");
    }
    device_.begin_call();
    if (capture_.active) {
      std::lock_guard lock(impl.mutex);
      impl.captured_since_clean = true;
    }
    // An earlier operation's, before this one is numbered (this call's memory is none yet: nothing to hand
    // on should it throw).
    impl.guarded([&] { device_.raise_failures(capture_.active); });
  }
  ~DeviceCall() {
    if (capture_.active) device_.end_captured_call(caller_);
  }
  DeviceCall(const DeviceCall&) = delete;
  DeviceCall& operator=(const DeviceCall&) = delete;

  LowLatencyDevice& device() const { return device_; }
  const LowLatencyDevice::Capture& capture() const { return capture_; }
  // The graph addresses this call's memory at every launch: its tensors are its own
  // (LowLatencyDevice::tensor).
  bool pinned() const { return capture_.active; }

 private:
  LowLatencyDevice& device_;
  void* caller_;
  LowLatencyDevice::Capture capture_;
};

// Fills `result`; returns the handle's record (the buffer joins them: the fields are its friends').
std::shared_ptr<detail::LowLatencyRecord> dispatch_on_device(LowLatencyBuffer::Impl& impl,
                                                             const TensorView& x, const TensorView& topk_idx,
                                                             const p::LowLatencyShape& shape, int K,
                                                             const LowLatencyDispatchOptions& options,
                                                             LowLatencyDispatchResult& result) {
  const DeviceCall call(impl, options.stream, options.async_finish);
  LowLatencyDevice& device = call.device();
  const LowLatencyDevice::Capture& capture = call.capture();
  const bool pinned = call.pinned();
  const int R = impl.num_ranks();
  const std::int64_t T = x.size(0), L = shape.local_experts(), rows = shape.rows_per_expert(),
                     H = shape.hidden, E = shape.num_experts, blocks = p::scale_blocks(H);
  auto record = std::make_shared<detail::LowLatencyRecord>();
  record->owner = &impl;
  record->shape = shape;
  record->num_tokens = T;
  record->num_topk = K;
  record->capture = capture;
  // The combine reuses the routing: a copy, as the caller may reuse its tensor. The kernels compute the
  // slots and counts from it (an id out of range is recorded as a fault and left out).
  record->device_topk_idx = device.tensor({T, K}, DType::int64, pinned);
  record->device_slot = device.tensor({T, K}, DType::int32, pinned);
  record->device_send_count = device.tensor({E}, DType::int32, pinned);
  record->src_info = device.tensor({L, rows}, DType::int32, pinned);
  record->layout_range = device.tensor({L, R}, DType::int64, pinned);

  result.recv_x = device.tensor({L, rows, H}, options.use_fp8 ? DType::fp8_e4m3 : DType::bf16, pinned);
  if (options.use_ue8m0) {
    result.recv_x_scales = device.tensor({L, p::ue8m0_packs(blocks), rows}, DType::int32, pinned);
  } else if (options.use_fp8) {
    result.recv_x_scales = device.tensor({L, blocks, rows}, DType::fp32, pinned);
  }
  result.recv_count = device.tensor({L}, DType::int32, pinned);
  Tensor wait_ns = device.tensor({L, R}, DType::int64, pinned);

  std::optional<Event> ignored;  // the buffer's stream orders its operations
  std::uint32_t operation = 0;
  {
    std::lock_guard lock(impl.mutex);
    operation = impl.claim(shape, false, options.async_finish, ignored);
    record->generation = impl.generation;
    impl.stats.operations += 1;
  }
  record->operation = operation;

  auto plan = dispatch_plan(impl, shape, operation, options, x, K);
  plan->topk_idx = record->device_topk_idx.data_as<const std::int64_t>();
  plan->slot = record->device_slot.data_as<const std::int32_t>();
  plan->send_count = record->device_send_count.data_as<const std::int32_t>();
  plan->recv_x = static_cast<std::byte*>(result.recv_x.data());
  if (options.use_ue8m0) {
    plan->recv_scales_ue8m0 = static_cast<std::uint8_t*>(result.recv_x_scales.data());
  } else if (options.use_fp8) {
    plan->recv_scales = result.recv_x_scales.data_as<float>();
  }
  plan->recv_count = result.recv_count.data_as<std::int32_t>();
  plan->recv_src_info = record->src_info.data_as<std::int32_t>();
  plan->layout_range = record->layout_range.data_as<std::int64_t>();
  plan->wait_ns = wait_ns.data_as<std::int64_t>();

  // As the host executor leaves them: ranges and counts zero, source infos -1, UE8M0 padding zero.
  // Runs before run_on_device returns (the caller's tensors are read in stream order after it).
  auto send = [&device, &result, plan, record, topk_idx, wait_ns] {
    device.copy(record->device_topk_idx.data(), topk_idx.data(), record->device_topk_idx.bytes());
    device.fill(record->src_info.data(), 0xff, record->src_info.bytes());
    device.fill(record->layout_range.data(), 0, record->layout_range.bytes());
    device.fill(result.recv_count.data(), 0, result.recv_count.bytes());
    device.fill(wait_ns.data(), 0, wait_ns.bytes());
    if (plan->recv_scales_ue8m0 != nullptr)
      device.fill(result.recv_x_scales.data(), 0, result.recv_x_scales.bytes());
    device.dispatch_send(*plan);
  };
  // The outputs stay allocated until the receive half is enqueued (blocks go back in the stream's order).
  auto keep = std::make_shared<std::vector<Tensor>>(
      std::vector<Tensor>{result.recv_x, result.recv_x_scales, result.recv_count});
  auto* recv_stats = options.cumulative_local_expert_recv_stats.data_as<std::int32_t>();
  auto* wait_stats = options.dispatch_wait_recv_cost_stats.data_as<std::int64_t>();
  auto receive = [&device, plan, record, wait_ns, keep, recv_stats, wait_stats] {
    device.dispatch_receive(*plan);
    device.add_dispatch_stats(*plan, recv_stats, wait_stats);
    record->received.store(true, std::memory_order_release);
  };
  impl.run_on_device(options.async_finish, options.return_recv_hook, send, receive, operation, false,
                     result.event, result.hook, options.stream, capture);
  if (options.async_finish) record->event = result.event;
  return record;
}

LowLatencyCombineResult combine_on_device(LowLatencyBuffer::Impl& impl, const TensorView& x,
                                          const TensorView& topk_weights,
                                          const std::shared_ptr<detail::LowLatencyRecord>& record,
                                          const LowLatencyCombineOptions& options) {
  const DeviceCall call(impl, options.stream, options.async_finish);
  LowLatencyDevice& device = call.device();
  const LowLatencyDevice::Capture& capture = call.capture();
  const bool pinned = call.pinned();
  if (capture.active && options.zero_copy) {
    fail(Errc::invalid_argument,
         "zero_copy inside a CUDA graph capture: the staging's early acquire is not captured; pass the "
         "experts' rows as x");
  }
  if (capture.active != record->capture.active || capture.id != record->capture.id) {
    fail(
        Errc::invalid_argument,
        record->capture.active
            ? "the handle's dispatch was captured into a CUDA graph: its combine belongs in the same capture "
              "(the dispatch's rows exist only when the graph is launched)"
            : "the handle's dispatch was made outside this CUDA graph capture: capture the dispatch and its "
              "combine together");
  }
  const p::LowLatencyShape& shape = record->shape;
  const std::int64_t T = record->num_tokens, E = shape.num_experts;
  const int K = record->num_topk;
  LowLatencyCombineResult result;
  TensorView out = options.out;
  if (out.empty()) {
    result.combined_x = device.tensor({T, shape.hidden}, DType::bf16, pinned);
    out = result.combined_x;
  }
  Tensor weights = device.tensor({T, K}, DType::fp32, pinned);  // a copy, as the caller may reuse its tensor
  Tensor wait_ns = device.tensor({E}, DType::int64, pinned);
  Tensor row_base = device.tensor({E}, DType::int64, pinned);

  std::optional<Event> ignored;
  std::uint32_t operation = 0;
  {
    std::lock_guard lock(impl.mutex);
    if (options.zero_copy) impl.check_zero_copy_staging(x, shape);
    operation = impl.claim(shape, true, options.async_finish, ignored);
    impl.stats.operations += 1;
  }

  auto plan = combine_plan(impl, *record, operation, x);
  plan->zero_copy = options.zero_copy;
  plan->topk_idx = record->device_topk_idx.data_as<const std::int64_t>();
  plan->topk_weights = weights.data_as<const float>();
  plan->slot = record->device_slot.data_as<const std::int32_t>();
  plan->send_count = record->device_send_count.data_as<const std::int32_t>();
  plan->out = out.data_as<std::uint16_t>();
  plan->wait_ns = wait_ns.data_as<std::int64_t>();
  plan->row_base = row_base.data_as<std::int64_t>();

  auto send = [&device, plan, topk_weights, weights, wait_ns] {
    device.copy(weights.data(), topk_weights.data(), weights.bytes());
    device.fill(wait_ns.data(), 0, wait_ns.bytes());
    device.combine_send(*plan);
  };
  auto* wait_stats = options.combine_wait_recv_cost_stats.data_as<std::int64_t>();
  auto receive = [&device, plan, record, weights, wait_ns, row_base, wait_stats,
                  keep = result.combined_x] {  // alive until enqueued
    device.combine_receive(*plan);
    device.add_combine_stats(*plan, wait_stats);
  };
  impl.run_on_device(options.async_finish, options.return_recv_hook, send, receive, operation, true,
                     result.event, result.hook, options.stream, capture);
  return result;
}

}  // namespace

LowLatencyDispatchResult LowLatencyBuffer::low_latency_dispatch(const TensorView& x,
                                                                const TensorView& topk_idx,
                                                                std::int64_t num_max_dispatch_tokens_per_rank,
                                                                std::int64_t num_experts,
                                                                const LowLatencyDispatchOptions& options) {
  Impl& impl = *impl_;
  const int R = impl.num_ranks();
  // Everything is checked before anything is sent.
  check_dispatch_flags(options);
  if (x.dim() != 2 || x.dtype() != DType::bf16)
    fail(Errc::invalid_argument, "x must be [num_tokens, hidden] bf16, not " + x.describe());
  const p::LowLatencyShape shape =
      check_low_latency_shape(num_max_dispatch_tokens_per_rank, x.size(1), R, num_experts, options.use_fp8,
                              impl.config.num_rdma_bytes);
  if (impl.device) {
    const int K = check_low_latency_inputs(x, topk_idx, shape, Device::cuda);
    check_optional(options.cumulative_local_expert_recv_stats, "cumulative_local_expert_recv_stats",
                   DType::int32, {shape.local_experts()}, Device::cuda);
    check_optional(options.dispatch_wait_recv_cost_stats, "dispatch_wait_recv_cost_stats", DType::int64, {R},
                   Device::cuda);
    LowLatencyDispatchResult result;
    auto record = dispatch_on_device(impl, x, topk_idx, shape, K, options, result);
    record->hook = result.hook.receive_;
    result.handle.record_ = record;
    return result;
  }
  const int K = check_low_latency_inputs(x, topk_idx, shape);
  const std::int64_t T = x.size(0);
  const std::int64_t L = shape.local_experts();
  const std::int64_t rows = shape.rows_per_expert();
  check_optional(options.cumulative_local_expert_recv_stats, "cumulative_local_expert_recv_stats",
                 DType::int32, {L});
  check_optional(options.dispatch_wait_recv_cost_stats, "dispatch_wait_recv_cost_stats", DType::int64, {R});

  auto record = std::make_shared<detail::LowLatencyRecord>();
  record->owner = &impl;
  record->shape = shape;
  record->num_tokens = T;
  record->num_topk = K;
  record->topk_idx.assign(topk_idx.data_as<const std::int64_t>(),
                          topk_idx.data_as<const std::int64_t>() + T * K);
  record->slot.resize(T * K);
  record->send_count.resize(num_experts);
  const p::SlotProblem problem = p::assign_slots(record->topk_idx.data(), T, K, num_experts,
                                                 record->slot.data(), record->send_count.data());
  if (problem.any()) reject_expert(record->topk_idx.data(), problem, K, num_experts);

  LowLatencyDispatchResult result;
  const std::int64_t H = shape.hidden;
  const std::int64_t blocks = p::scale_blocks(H);
  result.recv_x =
      Tensor({L, rows, H}, options.use_fp8 ? DType::fp8_e4m3 : DType::bf16, Tensor::Init::uninitialized);
  if (options.use_fp8) {
    result.recv_x_scales =
        options.use_ue8m0
            ? Tensor({L, p::ue8m0_packs(blocks), rows}, DType::int32, Tensor::Init::uninitialized)
            : Tensor({L, blocks, rows}, DType::fp32, Tensor::Init::uninitialized);
  }
  result.recv_count = Tensor({L}, DType::int32);
  record->src_info = Tensor({L, rows}, DType::int32, Tensor::Init::uninitialized);
  std::fill_n(record->src_info.data_as<std::int32_t>(), L * rows, -1);
  record->layout_range = Tensor({L, R}, DType::int64);
  auto wait_ns = std::make_shared<std::vector<std::int64_t>>(L * R, 0);

  std::optional<Event> wait_for;
  std::uint32_t operation = 0;
  {
    std::lock_guard lock(impl.mutex);
    operation = impl.claim(shape, false, options.async_finish, wait_for);
    record->generation = impl.generation;
  }
  record->operation = operation;

  auto plan = dispatch_plan(impl, shape, operation, options, x, K);
  plan->topk_idx = record->topk_idx.data();
  plan->slot = record->slot.data();
  plan->send_count = record->send_count.data();
  plan->recv_x = static_cast<std::byte*>(result.recv_x.data());
  if (options.use_ue8m0) {
    plan->recv_scales_ue8m0 = static_cast<std::uint8_t*>(result.recv_x_scales.data());
    std::memset(plan->recv_scales_ue8m0, 0, result.recv_x_scales.bytes());  // padding bytes of the last word
  } else if (options.use_fp8) {
    plan->recv_scales = result.recv_x_scales.data_as<float>();
  }
  plan->recv_count = result.recv_count.data_as<std::int32_t>();
  plan->recv_src_info = record->src_info.data_as<std::int32_t>();
  plan->layout_range = record->layout_range.data_as<std::int64_t>();
  plan->wait_ns = wait_ns->data();

  h::LowLatencyEngine* engine = impl.engine.get();
  auto send = [engine, plan, record] { engine->dispatch_send(*plan); };
  // The result tensors stay alive with the plan (recv_count and the scales are written by the receive).
  auto keep = std::make_shared<std::vector<Tensor>>(
      std::vector<Tensor>{result.recv_x, result.recv_x_scales, result.recv_count});
  auto receive = [&impl, engine, plan, record, wait_ns, options, keep] {
    engine->dispatch_receive(*plan);
    impl.add_dispatch_stats(*plan, options);
    record->received.store(true, std::memory_order_release);
  };
  impl.run(options.async_finish, options.return_recv_hook, send, receive, operation, false, result.event,
           result.hook, wait_for);
  record->hook = result.hook.receive_;
  if (options.async_finish) record->event = result.event;
  result.handle.record_ = record;
  return result;
}

LowLatencyCombineResult LowLatencyBuffer::low_latency_combine(const TensorView& x, const TensorView& topk_idx,
                                                              const TensorView& topk_weights,
                                                              const LowLatencyHandle& handle,
                                                              const LowLatencyCombineOptions& options) {
  Impl& impl = *impl_;
  const int R = impl.num_ranks();
  if (!handle.valid())
    fail(Errc::invalid_argument,
         "the handle is empty: pass the handle of this buffer's low_latency_dispatch");
  const std::shared_ptr<detail::LowLatencyRecord> record = handle.record_;
  if (record->owner != &impl)
    fail(Errc::invalid_argument, "the handle belongs to another LowLatencyBuffer (or another rank's)");
  if (options.async_finish && options.return_recv_hook) {
    fail(Errc::invalid_argument,
         "async_finish and return_recv_hook exclude each other: the hook takes the "
         "receives on the caller's thread");
  }
  {
    std::lock_guard lock(impl.mutex);
    if (record->generation != impl.generation) {
      fail(Errc::invalid_argument, "the handle's dispatch (operation " + std::to_string(record->operation) +
                                       ") came before clean_low_latency_buffer: dispatch again");
    }
  }
  const p::LowLatencyShape& shape = record->shape;
  const std::int64_t T = record->num_tokens;
  const int K = record->num_topk;
  const std::int64_t L = shape.local_experts();
  const Device where = impl.device ? Device::cuda : Device::host;
  if (impl.device) {  // the combine uses the dispatch's copy of the routing: topk_idx's shape is checked
    check_optional(topk_idx, "topk_idx", DType::int64, {T, K}, where);
  } else {
    check_same_routing(topk_idx, record->topk_idx, T, K);
  }
  check_optional(topk_weights, "topk_weights", DType::fp32, {T, K}, where);
  if (topk_weights.empty())
    fail(Errc::invalid_argument, "topk_weights is required: [num_tokens, num_topk] fp32");
  check_optional(options.out, "out", DType::bf16, {T, shape.hidden}, where);
  check_optional(options.combine_wait_recv_cost_stats, "combine_wait_recv_cost_stats", DType::int64, {R},
                 where);
  check_optional(x, "x", DType::bf16, {L, shape.rows_per_expert(), shape.hidden}, where);
  if (x.empty()) fail(Errc::invalid_argument, "x is required: the experts' rows, [E/R, R*T, hidden] bf16");
  // The dispatch's receives placed the rows x answers: they must have been taken.
  if (!record->received.load(std::memory_order_acquire)) {
    if (auto hook = record->hook.lock(); hook && hook->pending()) {
      fail(Errc::invalid_argument, "the handle's dispatch (operation " + std::to_string(record->operation) +
                                       ") has not been received: call its hook first");
    }
    if (record->event) record->event->wait();
    if (!record->received.load(std::memory_order_acquire)) {
      fail(Errc::invalid_argument, "the handle's dispatch (operation " + std::to_string(record->operation) +
                                       ") was never received (its hook was dropped, or it failed)");
    }
  }
  if (impl.device) return combine_on_device(impl, x, topk_weights, record, options);

  LowLatencyCombineResult result;
  std::uint16_t* out = nullptr;
  if (options.out.empty()) {
    result.combined_x = Tensor({T, shape.hidden}, DType::bf16, Tensor::Init::uninitialized);
    out = result.combined_x.data_as<std::uint16_t>();
  } else {
    out = options.out.data_as<std::uint16_t>();
  }
  auto weights = std::make_shared<std::vector<float>>(topk_weights.data_as<const float>(),
                                                      topk_weights.data_as<const float>() + T * K);
  auto wait_ns = std::make_shared<std::vector<std::int64_t>>(shape.num_experts, 0);
  auto row_base = std::make_shared<std::vector<std::int64_t>>(shape.num_experts, 0);

  std::optional<Event> wait_for;
  std::uint32_t operation = 0;
  {
    std::lock_guard lock(impl.mutex);
    if (options.zero_copy) impl.check_zero_copy_staging(x, shape);
    operation = impl.claim(shape, true, options.async_finish, wait_for);
  }

  auto plan = combine_plan(impl, *record, operation, x);
  plan->zero_copy = options.zero_copy;
  plan->topk_idx = record->topk_idx.data();
  plan->topk_weights = weights->data();
  plan->slot = record->slot.data();
  plan->send_count = record->send_count.data();
  plan->out = out;
  plan->wait_ns = wait_ns->data();
  plan->row_base = row_base->data();

  h::LowLatencyEngine* engine = impl.engine.get();
  auto keep = std::make_shared<Tensor>(result.combined_x);
  auto send = [engine, plan, record] { engine->combine_send(*plan); };
  const TensorView caller_stats = options.combine_wait_recv_cost_stats;
  auto receive = [&impl, engine, plan, record, weights, wait_ns, row_base, keep, caller_stats] {
    engine->combine_receive(*plan);
    impl.add_combine_stats(*plan, caller_stats);
  };
  impl.run(options.async_finish, options.return_recv_hook, send, receive, operation, true, result.event,
           result.hook, wait_for);
  return result;
}

void LowLatencyBuffer::clean_low_latency_buffer(std::int64_t num_max_dispatch_tokens_per_rank,
                                                std::int64_t hidden, std::int64_t num_experts) {
  Impl& impl = *impl_;
  const p::LowLatencyShape shape =
      check_low_latency_shape(num_max_dispatch_tokens_per_rank, hidden, impl.num_ranks(), num_experts, false,
                              impl.config.num_rdma_bytes);
  if (impl.device) impl.device->refuse_in_capture("clean_low_latency_buffer");  // before anything changes
  impl.settle("clean_low_latency_buffer");
  std::uint64_t epoch = 0;
  {
    std::lock_guard lock(impl.mutex);
    epoch = impl.generation;
  }
  if (impl.device) {
    try {
      impl.device->clean(impl.context(shape, 0), epoch);
    } catch (const std::exception& error) {
      // Some ranks may have passed it and reset their numbering: only a clean goes on from here, with the
      // next epoch, as on those ranks.
      std::lock_guard lock(impl.mutex);
      impl.generation += 1;
      impl.failure = std::string("clean_low_latency_buffer failed: ") + error.what();
      throw;
    }
  } else {
    impl.engine->clean(impl.context(shape, 0), epoch);
  }
  std::lock_guard lock(impl.mutex);
  impl.generation += 1;
  impl.shape = shape;
  impl.next_operation = 0;
  impl.captured_since_clean = false;
  for (auto& use : impl.uses) use.reset();
  impl.failure.clear();
  impl.stats.local_expert_recv.assign(shape.local_experts(), 0);
}

TensorView LowLatencyBuffer::get_next_low_latency_combine_buffer(const LowLatencyHandle& handle,
                                                                 void* stream) {
  Impl& impl = *impl_;
  if (!handle.valid() || handle.record_->owner != &impl)
    fail(Errc::invalid_argument,
         "get_next_low_latency_combine_buffer needs a handle of this buffer's dispatch");
  const p::LowLatencyShape shape = handle.record_->shape;
  // Refused before anything is enqueued: on the GPU in a capture, and after one (see captured_since_clean).
  if (impl.device && impl.device->check_stream(stream).active) {
    fail(Errc::invalid_argument,
         "get_next_low_latency_combine_buffer inside a CUDA graph capture: zero copy is not captured; pass "
         "the experts' rows as the combine's x");
  }
  std::uint32_t next = 0;
  {
    std::lock_guard lock(impl.mutex);
    impl.refuse_zero_copy_after_capture();  // never set on the host
    impl.refuse_after_failure();
    next = impl.next_operation;
  }
  impl.settle("get_next_low_latency_combine_buffer", static_cast<int>(next % p::kLowLatencyBuffers),
              impl.device == nullptr);
  const p::LowLatencyContext ctx = impl.context(shape, next);
  const Device where = impl.device ? Device::cuda : Device::host;
  if (impl.device) {
    // On the buffer's stream after the caller's, which then waits: the caller's writes come after it.
    LowLatencyDevice& device = *impl.device;
    impl.guarded([&] {
      device.raise_failures(false);  // check_stream refused a capture
      device.follow(stream);
      device.acquire_staging(ctx);
      device.lead(stream);
    });
  } else {
    impl.guarded([&] { impl.engine->acquire(ctx); });
  }
  return TensorView(impl.region() + ctx.layout.combine_staging(ctx.buffer, 0, 0),
                    {shape.local_experts(), shape.rows_per_expert(), shape.hidden}, DType::bf16, where);
}

void LowLatencyBuffer::low_latency_update_mask_buffer(int rank_to_mask, bool mask) {
  Impl& impl = *impl_;
  if (rank_to_mask < 0 || rank_to_mask >= impl.num_ranks()) {
    fail(Errc::invalid_argument, "rank_to_mask " + std::to_string(rank_to_mask) + " is not in [0, " +
                                     std::to_string(impl.num_ranks()) + ")");
  }
  if (rank_to_mask == impl.rank && mask)
    fail(Errc::invalid_argument, "rank " + std::to_string(impl.rank) + " cannot mask itself");
  if (impl.device) {
    impl.device->set_mask(rank_to_mask, mask);
    return;
  }
  std::atomic_ref<std::uint64_t> word(impl.mask[rank_to_mask]);
  if (!mask) {
    word.store(0, std::memory_order_release);
    return;
  }
  // A rank a wait already gave up on stays so (p::kMaskedByWait: nothing more is waited for from it).
  std::uint64_t unmasked = 0;
  word.compare_exchange_strong(unmasked, p::kMaskedByCaller, std::memory_order_acq_rel);
}

void LowLatencyBuffer::low_latency_query_mask_buffer(const TensorView& mask_status) const {
  const Impl& impl = *impl_;
  if (mask_status.empty()) fail(Errc::invalid_argument, "mask_status is required: int32 [num_ranks]");
  check_optional(mask_status, "mask_status", DType::int32, {impl.num_ranks()});
  const std::vector<std::uint64_t> on_device =
      impl.device ? impl.device->read_mask() : std::vector<std::uint64_t>{};
  for (int r = 0; r < impl.num_ranks(); ++r) {
    const std::uint64_t* lost = impl.gone();
    const bool gone =
        lost != nullptr && std::atomic_ref<const std::uint64_t>(lost[r]).load(std::memory_order_acquire) != 0;
    const std::uint64_t word =
        impl.device ? on_device[r]
                    : std::atomic_ref<std::uint64_t>(impl.mask[r]).load(std::memory_order_acquire);
    mask_status.data_as<std::int32_t>()[r] = gone || word != 0 ? 1 : 0;
  }
}

void LowLatencyBuffer::low_latency_clean_mask_buffer() {
  Impl& impl = *impl_;
  if (impl.device) {
    impl.device->clear_mask();
    return;
  }
  for (int r = 0; r < impl.num_ranks(); ++r)
    std::atomic_ref<std::uint64_t>(impl.mask[r]).store(0, std::memory_order_release);
}

LowLatencyStats LowLatencyBuffer::low_latency_stats() const {
  std::lock_guard lock(impl_->mutex);
  LowLatencyStats stats = impl_->stats;
  if (impl_->device) {  // the counts and waits stay in device memory (not gathered yet): empty, not zeros
    stats.local_expert_recv.clear();
    return stats;
  }
  stats.dispatch_wait_ns.resize(impl_->num_ranks(), 0);
  stats.combine_wait_ns.resize(impl_->num_ranks(), 0);
  if (impl_->engine) {
    const kernels::protocol::Traffic traffic = impl_->engine->traffic();
    stats.fabric_puts = traffic.fabric_puts;
    stats.fabric_signals = traffic.fabric_signals;
  }
  return stats;
}

}  // namespace ferry
