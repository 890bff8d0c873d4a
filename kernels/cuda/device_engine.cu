// The host side of the CUDA executor: plans in device memory, role groups per block, the three launches, and
// the reading back of counts, traffic and failure records.
#include "ferry/kernels/cuda/device_engine.hpp"

#include <algorithm>
#include <array>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <map>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>

#include "device_kernels.cuh"
#include "device_memory.cuh"
#include "device_report.hpp"
#include "launch_keeper.hpp"

namespace ferry::kernels::cuda {

namespace p = protocol;

bool built_with_cuda() {
  return true;
}

std::string gpu_unavailable_reason() {
  int count = 0;
  const cudaError_t status = cudaGetDeviceCount(&count);  // leaves `count` alone on failure: check the status
  if (status != cudaSuccess) return std::string("cudaGetDeviceCount: ") + cudaGetErrorName(status);
  if (count == 0) return "no CUDA device";
  return {};
}

// ---- records ----

// [num_recv, num_forwarded] of one routing, as the notify kernel left them in device memory, and the host's
// copy once read. Shared by the records of the dispatch that ran the notify and of the cached dispatches that
// repeat it, so a cached dispatch never reads them at its call.
struct RecordTotals {
  int device = 0;
  cudaStream_t stream = nullptr;       // the notify's: read in its order
  std::shared_ptr<void> stream_owner;  // keeps it alive (nullptr: the legacy stream)
  const std::int64_t* words = nullptr;
  bool cacheable = true;  // false when the notify was captured in a CUDA graph: every launch may differ
  std::mutex mutex;
  bool known = false;
  std::int64_t values[2] = {0, 0};

  // In the order of the stream the notify ran on (a legacy-stream copy would not wait for a non-blocking
  // stream), or on `on` when the host has seen the notify finish (a stream with nothing queued behind the
  // operations that may follow the notify); any thread may ask (the thread that waits on the dispatch, the
  // one that issues a cached one).
  std::array<std::int64_t, 2> read(std::optional<cudaStream_t> on = std::nullopt) {
    std::lock_guard lock(mutex);
    if (known) return {values[0], values[1]};
    DeviceScope scope(device);
    const cudaStream_t in = on.value_or(stream);
    std::int64_t host[2] = {0, 0};  // pageable: the copy is done when the call returns, then the sync
    check(cudaMemcpyAsync(host, words, sizeof(host), cudaMemcpyDeviceToHost, in), "read back the counts");
    // No deadline of its own: the engine reads here after its heartbeat-bounded wait for the stream (sized
    // by counts, finish()) or once the dispatch's event has passed (`on`: the own stream, nothing long
    // ahead). Read on the notify's stream otherwise (device_num_recv), it also waits for every operation
    // queued behind the notify, and those end by themselves: every spin on the GPU gives up after the
    // timeout.
    check(cudaStreamSynchronize(in), "read back the counts");
    known = cacheable;
    values[0] = host[0];
    values[1] = host[1];
    return {values[0], values[1]};
  }
};

struct DeviceRecord {
  int rank = 0;
  int channels = 0;
  std::int64_t num_tokens = 0;
  int num_topk = 0;
  std::int64_t num_experts = 0;
  int num_ranks = 0;
  int num_nodes = 0;
  std::int64_t worst_rows = 0;  // num_worst_tokens of the dispatch that ran the notify (0: sized by counts)
  // The routing, copied at the call, and the counts: shared by the cached dispatches that repeat it.
  std::shared_ptr<DeviceArray<std::int64_t>> topk_idx;
  std::shared_ptr<DeviceArray<std::uint8_t>> in_rank;
  std::shared_ptr<DeviceArray<std::int64_t>> counts;  // send_to_rank | recv_count | recv_offset | (per node:)
                                                      // send_to_node | fwd_count | fwd_offset | totals [2]
  std::shared_ptr<RecordTotals> totals_state;
  // This dispatch's placements.
  DeviceArray<std::int32_t> recv_src_rank;
  DeviceArray<std::int32_t> recv_src_token;
  DeviceArray<std::int32_t> fwd_token;
  DeviceArray<std::uint32_t> fwd_mask;
  std::int64_t record_capacity = 0;
  std::int64_t fwd_capacity = 0;
  cudaStream_t stream = nullptr;  // the dispatch's (kept alive by the arrays' stream owner)

  std::int64_t per_rank() const { return static_cast<std::int64_t>(num_ranks) * channels; }
  std::int64_t per_node() const { return static_cast<std::int64_t>(num_nodes) * channels; }
  std::int64_t* send_to_rank() const { return counts->data(); }
  std::int64_t* recv_count() const { return counts->data() + per_rank(); }
  std::int64_t* recv_offset() const { return counts->data() + 2 * per_rank(); }
  std::int64_t* send_to_node() const { return counts->data() + 3 * per_rank(); }
  std::int64_t* fwd_count() const { return counts->data() + 3 * per_rank() + per_node(); }
  std::int64_t* fwd_offset() const { return counts->data() + 3 * per_rank() + 2 * per_node(); }
  // [num_recv, num_forwarded], written by the notify kernel; read back once the stream has passed it.
  std::int64_t* totals() const { return counts->data() + 3 * per_rank() + 3 * per_node(); }
  std::int64_t num_recv() const { return totals_state->read()[0]; }
  std::int64_t num_forwarded() const { return totals_state->read()[1]; }

  p::RoutingCounts routing() const {
    return {recv_count(), recv_offset(), fwd_count(), fwd_offset(), send_to_rank(), send_to_node()};
  }
};

namespace {

// In `stream`'s order (never the legacy stream's, which does not wait for a non-blocking stream and does
// wait for every blocking one). The synchronisation has no deadline: it waits for every operation queued on
// `stream` before the copy (for the test helpers below, those after the dispatch too), which end by
// themselves (every spin on the GPU gives up after the timeout); the engine's own callers read on its own
// stream, where nothing long is queued.
template <class T>
std::vector<T> read_back(const T* device, std::int64_t count, cudaStream_t stream) {
  std::vector<T> host(static_cast<std::size_t>(std::max<std::int64_t>(count, 0)));
  if (host.empty()) return host;
  check(cudaMemcpyAsync(host.data(), device, host.size() * sizeof(T), cudaMemcpyDeviceToHost, stream),
        "read back");
  check(cudaStreamSynchronize(stream), "read back");
  return host;
}

}  // namespace

std::vector<std::int32_t> device_recv_src_rank(const DeviceRecord& record) {
  DeviceScope scope(record.totals_state->device);
  return read_back(record.recv_src_rank.data(), std::min(record.num_recv(), record.record_capacity),
                   record.stream);
}
std::vector<std::int32_t> device_recv_src_token(const DeviceRecord& record) {
  DeviceScope scope(record.totals_state->device);
  return read_back(record.recv_src_token.data(), std::min(record.num_recv(), record.record_capacity),
                   record.stream);
}
std::int64_t device_num_recv(const DeviceRecord& record) {
  return record.num_recv();
}

// ---- launch shapes ----

namespace {

// Whole multiples of 4 warps, at most the block size the kernels are compiled for.
int warps_of(const DeviceOptions& options) {
  return std::clamp(options.threads_per_block / 128 * 4, 4, kMaxThreadsPerBlock / 32);
}

void add_groups(SidePlan& side, DeviceRole role, int count, int warps_each, int& next_warp, int& next_ring) {
  for (int s = 0; s < count; ++s) {
    GroupPlan& group = side.group[side.groups++];
    group.role = role;
    group.slice = static_cast<std::uint8_t>(s);
    group.slices = static_cast<std::uint8_t>(count);
    group.first_warp = static_cast<std::uint8_t>(next_warp);
    group.warps = static_cast<std::uint8_t>(warps_each);
    group.ring = static_cast<std::uint8_t>(next_ring++);
    next_warp += warps_each;
  }
}

std::uint32_t align16(std::size_t value) {
  return static_cast<std::uint32_t>((value + 15) / 16 * 16);
}

// Block 2c: the senders, 4 groups sharing the destinations. Block 2c + 1: forwarders and receivers (2 + 2
// groups), or 4 receivers on a single node; combine's receiver takes tokens in order, so it is one group.
KernelShape dispatch_shape(const p::Topology& topo, const DeviceOptions& options) {
  using Sender = p::DispatchSender<DeviceIo>;
  using Forwarder = p::DispatchForwarder<DeviceIo>;
  KernelShape shape;
  const int warps = warps_of(options);
  shape.threads = warps * 32;
  shape.blocks_per_rank = 2 * topo.num_channels;
  int next_warp = 0, ring = 0;
  add_groups(shape.side[0], DeviceRole::dispatch_send, 4, warps / 4, next_warp, ring);
  next_warp = 0;
  if (topo.num_nodes > 1) {
    add_groups(shape.side[1], DeviceRole::dispatch_forward, 2, warps / 4, next_warp, ring);
    add_groups(shape.side[1], DeviceRole::dispatch_receive, 2, warps / 4, next_warp, ring);
  } else {
    add_groups(shape.side[1], DeviceRole::dispatch_receive, 4, warps / 4, next_warp, ring);
  }
  const int L = topo.local_size, NR = topo.num_remote_nodes();
  SharedLayout& send = shape.shared[0];
  send.sender = 128;
  send.bytes = align16(send.sender + sizeof(Sender::Item) * Sender::num_items(topo));
  SharedLayout& receive = shape.shared[1];
  receive.forwarder_items = 128;
  receive.forwarder_rings = align16(receive.forwarder_items + sizeof(Forwarder::Item) * NR);
  receive.receiver_rings = align16(receive.forwarder_rings + sizeof(p::RingState) * NR * L);
  receive.bytes = align16(receive.receiver_rings + sizeof(p::RingState) * L * topo.num_nodes);
  return shape;
}

KernelShape combine_shape(const p::Topology& topo, const DeviceOptions& options) {
  using Forwarder = p::CombineForwarder<DeviceIo>;
  using Receiver = p::CombineReceiver<DeviceIo>;
  KernelShape shape;
  const int warps = warps_of(options);
  shape.threads = warps * 32;
  shape.blocks_per_rank = 2 * topo.num_channels;
  int next_warp = 0, ring = 0;
  add_groups(shape.side[0], DeviceRole::combine_send, 4, warps / 4, next_warp, ring);
  next_warp = 0;
  if (topo.num_nodes > 1) {
    add_groups(shape.side[1], DeviceRole::combine_forward, 2, warps / 4, next_warp, ring);
    add_groups(shape.side[1], DeviceRole::combine_receive, 1, warps / 2, next_warp, ring);
  } else {
    add_groups(shape.side[1], DeviceRole::combine_receive, 1, warps, next_warp, ring);
  }
  const int L = topo.local_size, NR = topo.num_remote_nodes();
  SharedLayout& send = shape.shared[0];
  send.sender = 128;
  send.bytes = align16(send.sender + sizeof(p::RingState) * topo.num_ranks());
  SharedLayout& receive = shape.shared[1];
  receive.forwarder_items = 128;
  receive.forwarder_rings = align16(receive.forwarder_items + sizeof(Forwarder::Item) * NR);
  receive.receiver = align16(receive.forwarder_rings + sizeof(p::RingState) * NR * L);
  receive.receiver_rings = align16(receive.receiver + sizeof(Receiver::Cursor));
  receive.bytes = align16(receive.receiver_rings + sizeof(p::RingState) * Receiver::num_rings(topo));
  return shape;
}

std::uint32_t notify_shared_bytes(const p::Topology& topo) {
  const int R = topo.num_ranks();
  return align16(128 + sizeof(unsigned long long) * (R + topo.num_nodes) * topo.num_channels +
                 2 * sizeof(p::RingState) * R + 2 * R);
}

std::uint32_t shared_bytes(const KernelShape& shape) {
  return std::max(shape.shared[0].bytes, shape.shared[1].bytes);
}

}  // namespace

int device_rings_per_rank(const p::Topology& topo, const DeviceOptions&) {
  return topo.num_channels * 2 * kMaxGroupsPerSide + 2;
}

// ---- the engine ----

namespace {

// Whether work enqueued on a stream now goes into a CUDA graph being captured, and into which graph.
struct Capture {
  bool active = false;
  cudaGraph_t graph = nullptr;
};

Capture capture_of(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  cudaGraph_t graph = nullptr;
  const cudaError_t error = cudaStreamGetCaptureInfo(stream, &status, nullptr, &graph);
  if (error == cudaErrorStreamCaptureImplicit) {
    forget_last_error();
    fail(Errc::invalid_argument,
         "cuda: an operation on the legacy default stream while a blocking stream is being captured into a "
         "CUDA graph (the legacy stream would join that capture and break it): pass a stream of your own");
  }
  check(error, "cudaStreamGetCaptureInfo");
  if (status == cudaStreamCaptureStatusInvalidated) {
    fail(
        Errc::invalid_argument,
        "cuda: the stream's CUDA graph capture was invalidated by an earlier call: end the capture and start "
        "again");
  }
  return {status == cudaStreamCaptureStatusActive, graph};
}

// Pinned staging buffers for launch plans, made when the engine starts (one per launch in flight).
constexpr std::size_t kStagingBuffers = 16;

// How often a waiting host reads the kernels' heartbeat.
constexpr auto kHeartbeatPoll = std::chrono::milliseconds(100);

std::string seconds_text(Duration duration) {
  char text[32];
  std::snprintf(text, sizeof(text), "%.1f", std::chrono::duration<double>(duration).count());
  return text;
}

}  // namespace

struct DeviceEngine::Impl {
  p::BufferLayout layout;
  DeviceOptions options;
  std::vector<DeviceRank> ranks;
  int sm_count = 0;
  // The engine's own stream (non-blocking): its set-up copies, the heartbeat's reads, and the plans and
  // arrays of captured operations, allocated and freed in its order outside any graph. Shared with those
  // arrays, which may outlive the engine (a Handle keeps a dispatch's records).
  std::shared_ptr<CUstream_st> own_stream_owner;
  cudaStream_t own_stream = nullptr;
  DeviceArray<p::BufferLayout> device_layout;
  std::vector<DeviceArray<std::byte*>> peers;                  // per rank: [L]
  std::vector<DeviceArray<transport::CommandRingView>> rings;  // per rank
  MappedArray<DeviceReport> reports;                           // per rank
  DeviceArray<std::uint32_t> claims;                           // per rank: a record was written (for good)
  DeviceArray<p::Traffic> traffic;                             // per rank: [3]
  // [kAbortWords] zeroed once: the abort word (a failure stops the executor for good) and the heartbeat.
  DeviceArray<std::uint32_t> abort;
  MappedArray<std::uint64_t> heartbeat;  // the host's copy of the heartbeat
  std::mutex heartbeat_mutex;
  std::uint32_t operations = 0;  // sequence number of the last operation (the same on every rank)
  // The launch plans of each operation and their pinned staging, until that operation's own event; the plans
  // and arrays of a captured operation, until its graph lets go.
  LaunchKeeper<MappedArray<RankLaunch>> keeper;
  // Streams whose owners must outlive the arrays freed in their order (keep_stream_alive).
  std::mutex streams_mutex;
  std::map<cudaStream_t, std::shared_ptr<void>> stream_owners;
  // The first failed operation (0: none) and its error: every later one fails without running.
  std::mutex failure_mutex;
  std::uint32_t failed_operation = 0;
  std::string failure_text;
  Errc failure_code = Errc::internal;

  std::uint64_t timeout_ns() const {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(options.timeout).count());
  }
  // How long the host waits without seeing the kernels progress: twice their own deadline and a margin.
  Duration patience() const { return options.timeout * 2 + std::chrono::seconds(10); }

  p::OpContext context(int index, int channels, p::PayloadKind kind, std::int64_t hidden,
                       std::int64_t experts, int rdma_chunk, int nvl_chunk, std::uint64_t fingerprint) {
    p::OpContext ctx;
    ctx.layout = device_layout.data();  // read on the device only
    ctx.topo = layout.params.topo;
    ctx.topo.num_channels = channels;
    ctx.split = {experts, experts / ctx.topo.num_ranks()};
    ctx.rank = ranks[index].rank;
    ctx.operation = operations;
    ctx.fingerprint = fingerprint;
    ctx.kind = kind;
    ctx.hidden = hidden;
    ctx.rdma_chunk = rdma_chunk > 0 ? rdma_chunk : options.rdma_chunk;
    ctx.nvl_chunk = nvl_chunk > 0 ? nvl_chunk : options.nvl_chunk;
    return ctx;
  }

  RankLaunch base_launch(int index) const {
    RankLaunch launch;
    launch.local = ranks[index].buffer;
    launch.node_peers = peers[index].data();
    launch.rings = ranks[index].rings.empty() ? nullptr : rings[index].data();
    launch.rings_per_rank = static_cast<int>(ranks[index].rings.size());
    launch.report = reports.device() + index;
    launch.claim = claims.data() + index;
    launch.traffic = traffic.data() + 3 * index;
    return launch;
  }

  std::shared_ptr<void> owner_of(cudaStream_t stream) {
    std::lock_guard lock(streams_mutex);
    auto it = stream_owners.find(stream);
    return it == stream_owners.end() ? nullptr : it->second;
  }

  // Where an operation's arrays are allocated and freed: in the order of its stream, or, when it is being
  // captured, of the engine's own stream (outside the graph: a graph's own allocations would have to be
  // freed inside it before it could be launched again).
  struct Placement {
    cudaStream_t stream = nullptr;
    std::shared_ptr<void> owner;
  };
  Placement placement(cudaStream_t stream, const Capture& capture) {
    if (capture.active) return {own_stream, own_stream_owner};
    return {stream, owner_of(stream)};
  }

  template <class T>
  std::shared_ptr<DeviceArray<T>> ordered_array(std::size_t count, const Placement& where) {
    return std::make_shared<DeviceArray<T>>(count, where.stream, true, where.owner);
  }

  // The kernel's dynamic shared memory limit is one process-wide attribute, which every engine launches
  // under: raised to the most any engine asked for, never lowered (set to each engine's own size, one engine
  // could lower it between another's check and launch, which would then fail). Per device: an attribute
  // set with one device current applies to that device's context.
  static void allow_dynamic_shared(const void* kernel, std::uint32_t shared, const char* name) {
    static std::mutex mutex;
    static std::map<std::pair<int, const void*>, std::uint32_t> allowed;
    std::lock_guard lock(mutex);
    std::uint32_t& most = allowed[{current_device(), kernel}];
    if (shared <= most) return;
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)),
          name);
    most = shared;
  }

  // Every block of `kernel` on this GPU, this engine's ranks' and other engines', must be resident at once.
  void check_residency(const void* kernel, const char* name, int blocks_per_rank, int threads,
                       std::uint32_t shared) {
    if (shared > 48 * 1024) allow_dynamic_shared(kernel, shared, name);
    int per_sm = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared), name);
    const std::string problem =
        residency_problem(name, blocks_per_rank, static_cast<int>(ranks.size()),
                          options.other_ranks_on_device, threads, shared, per_sm, sm_count);
    if (!problem.empty()) fail(Errc::invalid_argument, problem);
  }

  // Copies the launch plans to the device and launches `kernel` cooperatively. The device copy and the pinned
  // staging it is copied from stay with the current operation until its own event has passed. A captured
  // operation's plans are copied now, on the engine's own stream, and the graph reads that copy at every
  // launch (no staging: the graph has no copy node).
  void launch(const void* kernel, const char* name, const std::vector<RankLaunch>& plans,
              const KernelShape& shape, int blocks_per_rank, int threads, std::uint32_t shared,
              cudaStream_t stream, const Capture& capture) {
    const int blocks = blocks_per_rank * static_cast<int>(plans.size());
    check_residency(kernel, name, blocks_per_rank, threads, shared);
    const std::size_t bytes = sizeof(RankLaunch) * plans.size();
    auto device_plans = ordered_array<RankLaunch>(plans.size(), placement(stream, capture));
    keeper.keep(device_plans);
    if (capture.active) {
      check(cudaMemcpyAsync(device_plans->data(), plans.data(), bytes, cudaMemcpyHostToDevice, own_stream),
            "copy of the launch plans");
      // Also completes every allocation the graph uses, so any stream may launch it.
      check(cudaStreamSynchronize(own_stream), "copy of the launch plans");
    } else {
      std::shared_ptr<MappedArray<RankLaunch>> staged = keeper.stage(plans.size());
      if (staged == nullptr) {  // every reserved buffer is read by a queued copy: wait for one to pass
        wait_until(
            [&] {
              keeper.collect();
              staged = keeper.stage(plans.size());
              return staged != nullptr;
            },
            "the operations holding every launch-plan staging buffer");
      }
      std::copy(plans.begin(), plans.end(), staged->host());
      check(cudaMemcpyAsync(device_plans->data(), staged->host(), bytes, cudaMemcpyHostToDevice, stream),
            "copy of the launch plans");
    }

    LaunchArgs args;
    args.ranks = device_plans->data();
    args.num_ranks = static_cast<int>(plans.size());
    args.shape = shape;
    args.shape.blocks_per_rank = blocks_per_rank;
    args.timeout_ns = timeout_ns();
    args.abort = abort.data();
    void* params[] = {&args};
    check(cudaLaunchCooperativeKernel(kernel, blocks, threads, params, shared, stream), name);
  }

  // The current operation was captured into `graph`: what it holds goes once the graph lets go (a user
  // object the graph owns flags it). Should CUDA refuse the user object, it is held until the engine goes.
  void hold_for_graph(cudaGraph_t graph) {
    std::shared_ptr<const std::atomic<bool>> released = transport::detail::flag_when_graph_lets_go(graph);
    if (!released) {
      keeper.end({});
      return;
    }
    keeper.end([released] { return released->load(std::memory_order_acquire); });
  }

  // One dispatch or combine: its sequence number, and, when it ends (returned or threw after enqueueing
  // something), an event after everything it enqueued, which tells the keeper when to let go; or, when the
  // stream is being captured, the graph's user object.
  class Operation {
   public:
    Operation(Impl& impl, cudaStream_t stream, const Capture& capture)
        : impl_(impl), stream_(stream), capture_(capture) {
      impl.keeper.begin();
      number_ = ++impl.operations;
    }
    ~Operation() {
      try {
        if (capture_.active) {
          impl_.hold_for_graph(capture_.graph);
          return;
        }
        auto event = std::make_shared<DeviceEvent>(impl_.options.device);
        event->record(stream_);
        impl_.keeper.end([event] { return event->passed(); });
      } catch (...) {  // no event: held until the engine goes
        impl_.keeper.end({});
      }
    }
    Operation(const Operation&) = delete;
    Operation& operator=(const Operation&) = delete;
    std::uint32_t number() const { return number_; }

   private:
    Impl& impl_;
    cudaStream_t stream_;
    Capture capture_;
    std::uint32_t number_ = 0;
  };

  // Takes what the roles recorded in mapped memory into the host's view: the earliest failed operation and
  // its error. A record is complete once its failure word is set (written last), so this may run while
  // kernels run. Clears the records (a rank records at most once: its claim is never reset).
  void absorb_reports() {
    std::lock_guard lock(failure_mutex);
    for (std::size_t i = 0; i < ranks.size(); ++i) {
      volatile DeviceReport& slot = reports.host()[i];
      if (static_cast<DeviceFailure>(slot.failure) == DeviceFailure::none) continue;
      std::atomic_thread_fence(std::memory_order_acquire);
      const DeviceReport report = const_cast<const DeviceReport&>(slot);
      const_cast<DeviceReport&>(slot) = DeviceReport{};
      if (failed_operation != 0 && failed_operation <= report.operation) continue;
      try {
        throw_report(report, options.timeout);
      } catch (const Error& error) {
        failed_operation = report.operation;
        failure_code = error.code();
        failure_text = error.message();
      }
    }
  }

  // The executor stops at its first failure (the rings are in an unknown state on every rank): a later
  // operation is not run at all.
  void refuse_if_stopped() {
    absorb_reports();
    std::lock_guard lock(failure_mutex);
    if (failed_operation == 0) return;
    fail(Errc::peer_failure,
         "cuda: operation not run: operation " + std::to_string(failed_operation) +
             " failed and the executor stopped (its rings are in an unknown state): " + failure_text);
  }

  // Throws when operation `number` failed, or did not run because an earlier one failed.
  void raise_failures(std::uint32_t number) {
    absorb_reports();
    std::lock_guard lock(failure_mutex);
    if (failed_operation == 0 || number < failed_operation) return;
    if (number == failed_operation) fail(failure_code, failure_text);
    fail(Errc::peer_failure, "cuda: operation " + std::to_string(number) + " did not run: operation " +
                                 std::to_string(failed_operation) + " failed before it: " + failure_text);
  }

  // The host gave up waiting for operation `number` (a CUDA error or its own deadline): it stops the
  // executor like a role's failure.
  void stop_at(std::uint32_t number, const Error& error) {
    std::lock_guard lock(failure_mutex);
    if (failed_operation != 0 && failed_operation <= number) return;
    failed_operation = number;
    failure_code = error.code();
    failure_text = error.message();
  }

  // The kernels' heartbeat (the globaltimer of their latest progress), read on the engine's own stream while
  // they run: a copy engine, not an SM, moves it.
  std::uint64_t read_heartbeat() {
    std::lock_guard lock(heartbeat_mutex);
    check(cudaMemcpyAsync(heartbeat.host(), heartbeat_word(abort.data()), sizeof(std::uint64_t),
                          cudaMemcpyDeviceToHost, own_stream),
          "read the heartbeat");
    check(cudaStreamSynchronize(own_stream), "read the heartbeat");
    return *reinterpret_cast<volatile std::uint64_t*>(heartbeat.host());
  }

  // Polls `passed` until it says yes. The kernels end by themselves (every spin gives up after the timeout
  // without progress); the host gives up only when their heartbeat has stood still for patience(): kernels
  // that never started or cannot end. A long operation that progresses is waited for, however long.
  void wait_until(const std::function<bool()>& passed, const std::string& what) {
    ProgressDeadline stall(patience());
    Backoff backoff;
    Clock::time_point next_read = Clock::now();
    std::uint64_t beat = 0;
    while (!passed()) {
      const Clock::time_point now = Clock::now();
      if (now >= next_read) {
        beat = read_heartbeat();
        next_read = now + kHeartbeatPoll;
      }
      if (stall.expired(beat, now)) {
        fail(Errc::timeout,
             "cuda: " + what + " made no progress for " + seconds_text(patience()) +
                 " s (their heartbeat stood still; every spin on the GPU gives up after " +
                 seconds_text(options.timeout) +
                 " s without progress, so they could not end by themselves: not started, or hung)");
      }
      backoff.pause();
    }
  }

  // Waits for everything enqueued on `stream`; a CUDA error or a stall stops the executor at operation
  // `number`.
  void wait(cudaStream_t stream, std::uint32_t number) {
    try {
      wait_until(
          [stream] {
            const cudaError_t status = cudaStreamQuery(stream);
            if (status == cudaSuccess) return true;
            if (status != cudaErrorNotReady) check(status, "the executor's kernels");
            return false;
          },
          "the executor's kernels");
    } catch (const Error& error) {
      stop_at(number, error);
      throw;
    }
  }

  // Local memory for the kernels' stacks, reserved once, now: left to the first launch, the driver grows it
  // then and synchronises the device in the middle of the first operation. Only ever raised (the limit is
  // the context's, shared with the rest of the process).
  static void reserve_stacks() {
    std::size_t needed = 0;
    for (const void* kernel :
         {reinterpret_cast<const void*>(&notify_kernel), reinterpret_cast<const void*>(&dispatch_kernel),
          reinterpret_cast<const void*>(&combine_kernel)}) {
      cudaFuncAttributes attributes{};
      check(cudaFuncGetAttributes(&attributes, kernel), "cudaFuncGetAttributes");
      needed = std::max(needed, attributes.localSizeBytes);
    }
    // A little over what ptxas reported, rounded. The driver reserves the limit for every thread the device
    // can hold at once, whatever our kernels launch: limit x 2048 threads/SM x SMs, so every byte here costs
    // 270 KB on an H100 or H200 (132 SMs). combine's 2320-byte frame (ptxas, sm_90a; its receiver's term and
    // ring lists for up to 64 nodes) rounds to 2560 B: 2560 x 2048 x 132 = 692 MB of device memory per
    // process (docs/perf/dispatch-cuda.md weighs moving the lists to shared memory).
    constexpr std::size_t kMargin = 128;
    needed = (needed + kMargin + 255) / 256 * 256;
    std::size_t current = 0;
    check(cudaDeviceGetLimit(&current, cudaLimitStackSize), "cudaDeviceGetLimit(stack size)");
    if (current < needed)
      check(cudaDeviceSetLimit(cudaLimitStackSize, needed), "cudaDeviceSetLimit(stack size)");
  }
};

DeviceEngine::DeviceEngine(const p::BufferLayout& layout, std::vector<DeviceRank> ranks,
                           const DeviceOptions& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& impl = *impl_;
  const std::string unavailable = gpu_unavailable_reason();
  if (!unavailable.empty()) fail(Errc::unsupported, "the CUDA executor needs a GPU: " + unavailable);
  if (ranks.empty()) fail(Errc::invalid_argument, "DeviceEngine: no ranks");
  if (options.other_ranks_on_device < 0) {
    fail(Errc::invalid_argument, "DeviceEngine: other_ranks_on_device is " +
                                     std::to_string(options.other_ranks_on_device) + ", not >= 0");
  }
  impl.layout = layout;
  impl.options = options;
  impl.ranks = std::move(ranks);
  DeviceScope scope(options.device);
  check(cudaDeviceGetAttribute(&impl.sm_count, cudaDevAttrMultiProcessorCount, options.device),
        "cudaDeviceGetAttribute(multiprocessors)");
  int cooperative = 0;
  check(cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, options.device),
        "cudaDeviceGetAttribute(cooperative launch)");
  if (!cooperative) fail(Errc::unsupported, "the GPU does not support cooperative launches");
  // Refused now, by name, rather than at the first operation: the shape of the whole buffer on this GPU.
  const p::Topology& topo = layout.params.topo;
  const KernelShape dispatch_full = dispatch_shape(topo, options);
  const KernelShape combine_full = combine_shape(topo, options);
  impl.check_residency(reinterpret_cast<const void*>(&notify_kernel), "notify", 1, kNotifyThreads,
                       notify_shared_bytes(topo));
  impl.check_residency(reinterpret_cast<const void*>(&dispatch_kernel), "dispatch",
                       dispatch_full.blocks_per_rank, dispatch_full.threads, shared_bytes(dispatch_full));
  impl.check_residency(reinterpret_cast<const void*>(&combine_kernel), "combine",
                       combine_full.blocks_per_rank, combine_full.threads, shared_bytes(combine_full));
  // Per-operation arrays come from the executor's own pool in stream order (executor_pool: freed memory is
  // kept for the next operation, without changing the device's default pool for the rest of the process).
  executor_pool(options.device);
  cudaStream_t own = nullptr;
  check(cudaStreamCreateWithFlags(&own, cudaStreamNonBlocking), "cudaStreamCreateWithFlags");
  impl.own_stream_owner = std::shared_ptr<CUstream_st>(own, [device = options.device](cudaStream_t done) {
    DeviceScope scope(device, std::nothrow);
    cudaStreamDestroy(done);
  });
  impl.own_stream = own;
  impl.stream_owners[own] = impl.own_stream_owner;

  // The set-up copies on the engine's own stream, synchronised once at the end (no device-wide
  // synchronisation: another engine's kernels may be running on this GPU).
  const cudaStream_t setup = impl.own_stream;
  impl.device_layout = DeviceArray<p::BufferLayout>(1);
  check(cudaMemcpyAsync(impl.device_layout.data(), &impl.layout, sizeof(p::BufferLayout),
                        cudaMemcpyHostToDevice, setup),
        "copy of the buffer layout");
  const int L = topo.local_size;
  const std::size_t expected_rings = static_cast<std::size_t>(device_rings_per_rank(topo, options));
  for (const DeviceRank& rank : impl.ranks) {
    if (static_cast<int>(rank.node_peers.size()) != L) {
      fail(Errc::invalid_argument, "DeviceEngine: rank " + std::to_string(rank.rank) + " has " +
                                       std::to_string(rank.node_peers.size()) + " node peers, not " +
                                       std::to_string(L));
    }
    if (!rank.rings.empty() && rank.rings.size() != expected_rings) {
      fail(Errc::invalid_argument, "DeviceEngine: rank " + std::to_string(rank.rank) + " has " +
                                       std::to_string(rank.rings.size()) + " command rings, not " +
                                       std::to_string(expected_rings));
    }
    if (topo.num_nodes > 1 && rank.rings.empty()) {
      fail(Errc::invalid_argument, "DeviceEngine: rank " + std::to_string(rank.rank) +
                                       " has peers on other nodes but no command rings to reach them");
    }
    DeviceArray<std::byte*> peers(L);
    check(cudaMemcpyAsync(peers.data(), rank.node_peers.data(), sizeof(std::byte*) * L,
                          cudaMemcpyHostToDevice, setup),
          "copy of the node peers");
    impl.peers.push_back(std::move(peers));
    DeviceArray<transport::CommandRingView> views(rank.rings.size());
    if (!rank.rings.empty()) {
      check(cudaMemcpyAsync(views.data(), rank.rings.data(),
                            sizeof(transport::CommandRingView) * rank.rings.size(), cudaMemcpyHostToDevice,
                            setup),
            "copy of the command ring views");
    }
    impl.rings.push_back(std::move(views));
  }
  impl.reports = MappedArray<DeviceReport>(impl.ranks.size());
  impl.claims = DeviceArray<std::uint32_t>(impl.ranks.size());
  impl.claims.zero(setup);
  impl.traffic = DeviceArray<p::Traffic>(3 * impl.ranks.size());
  impl.traffic.zero(setup);
  impl.abort = DeviceArray<std::uint32_t>(kAbortWords);
  impl.abort.zero(setup);
  impl.heartbeat = MappedArray<std::uint64_t>(1);
  // Every pinned staging buffer now, none mid-run (launch_keeper.hpp says why): a dispatch takes two, so
  // this many operations may be queued before the next one waits for the oldest.
  impl.keeper.reserve(kStagingBuffers, impl.ranks.size(),
                      [](std::size_t size) { return std::make_shared<MappedArray<RankLaunch>>(size); });
  Impl::reserve_stacks();
  check(cudaStreamSynchronize(setup), "the executor's setup");
}

// Nothing the kernels still use may go: waits for every operation still held (their kernels end by
// themselves; a captured one when its graph has gone), giving up only when the kernels stop progressing.
DeviceEngine::~DeviceEngine() {
  Impl& impl = *impl_;
  DeviceScope scope(impl.options.device, std::nothrow);
  try {
    impl.wait_until(
        [&impl] {
          impl.keeper.collect();
          return impl.keeper.awaiting() == 0;
        },
        "the operations the engine still held when it went");
  } catch (...) {  // a destructor cannot report: what is still held is released all the same
  }
}

int DeviceEngine::num_ranks() const {
  return static_cast<int>(impl_->ranks.size());
}

std::vector<DeviceDispatchResult> DeviceEngine::dispatch(
    const DeviceDispatchShape& shape, const std::vector<DeviceDispatchInput>& inputs,
    const std::vector<std::shared_ptr<DeviceRecord>>* cached, void* stream_handle) {
  Impl& impl = *impl_;
  auto stream = static_cast<cudaStream_t>(stream_handle);
  DeviceScope scope(impl.options.device);
  const std::size_t count = impl.ranks.size();
  if (inputs.size() != count) fail(Errc::invalid_argument, "DeviceEngine::dispatch: one input per rank");
  if (cached != nullptr && cached->size() != count)
    fail(Errc::invalid_argument, "DeviceEngine::dispatch: one cached record per rank");
  impl.refuse_if_stopped();
  impl.keeper.collect();
  const Capture capture = capture_of(stream);
  // While the operation is captured, the set-up it does off the captured stream (allocating on the engine's
  // own stream and synchronising that stream) counts as "potentially unsafe" in the caller's capture mode.
  const transport::detail::RelaxedCaptureMode relaxed(capture.active);
  const p::Topology full = impl.layout.params.topo;
  const int channels =
      cached != nullptr ? (*cached)[0]->channels : (shape.channels > 0 ? shape.channels : full.num_channels);
  if (channels > full.num_channels) {
    fail(Errc::invalid_argument, "a dispatch on " + std::to_string(channels) +
                                     " channels on a buffer laid out for " +
                                     std::to_string(full.num_channels));
  }
  const int R = full.num_ranks(), N = full.num_nodes, L = full.local_size;
  // A cached dispatch has the rows of the dispatch it repeats (whose counts it reuses).
  std::int64_t worst = shape.num_worst_tokens;
  if (cached != nullptr) {
    const std::int64_t inherited = (*cached)[0]->worst_rows;
    if (worst > 0 && worst != inherited) {
      fail(Errc::invalid_argument,
           "a cached dispatch has the sizing of the dispatch it repeats: num_worst_tokens " +
               std::to_string(inherited) + ", not " + std::to_string(worst));
    }
    worst = inherited;
  }
  if (capture.active && worst <= 0 && cached == nullptr) {
    fail(Errc::invalid_argument,
         "cuda: a dispatch captured into a CUDA graph needs worst-case sizing (num_worst_tokens > 0): sized "
         "by its counts, it waits for them on the host");
  }
  const Impl::Placement where = impl.placement(stream, capture);
  Impl::Operation operation(impl, stream, capture);

  std::vector<std::shared_ptr<DeviceRecord>> records(count);
  std::vector<RankLaunch> plans(count);
  for (std::size_t i = 0; i < count; ++i) {
    const DeviceDispatchInput& in = inputs[i];
    auto record = std::make_shared<DeviceRecord>();
    record->stream = stream;
    record->num_ranks = R;
    record->num_nodes = N;
    record->worst_rows = worst;
    if (cached != nullptr) {
      const DeviceRecord& old = *(*cached)[i];
      record->rank = old.rank;
      record->channels = old.channels;
      record->num_tokens = old.num_tokens;
      record->num_topk = old.num_topk;
      record->num_experts = old.num_experts;
      record->topk_idx = old.topk_idx;
      record->in_rank = old.in_rank;
      record->counts = old.counts;
      record->totals_state = old.totals_state;
    } else {
      record->rank = impl.ranks[i].rank;
      record->channels = channels;
      record->num_tokens = in.num_tokens;
      record->num_topk = shape.num_topk;
      record->num_experts = shape.num_experts;
      record->topk_idx = impl.ordered_array<std::int64_t>(in.num_tokens * shape.num_topk, where);
      record->in_rank = impl.ordered_array<std::uint8_t>(in.num_tokens * R, where);
      // Copied in the stream's order, and the caller's stream waits for the copies (below): the routing the
      // roles read cannot change under them, whatever the caller enqueues after the call.
      if (in.num_tokens > 0) {
        check(cudaMemcpyAsync(record->topk_idx->data(), in.topk_idx,
                              sizeof(std::int64_t) * in.num_tokens * shape.num_topk, cudaMemcpyDeviceToDevice,
                              stream),
              "copy of topk_idx");
        check(cudaMemcpyAsync(record->in_rank->data(), in.in_rank,
                              static_cast<std::size_t>(in.num_tokens) * R, cudaMemcpyDeviceToDevice, stream),
              "copy of the layout");
      }
      record->counts = impl.ordered_array<std::int64_t>(3 * (R + N) * channels + 2, where);
      record->counts->zero(stream);
      auto totals = std::make_shared<RecordTotals>();
      totals->device = impl.options.device;
      totals->stream = stream;
      totals->stream_owner = impl.owner_of(stream);
      totals->words = record->totals();
      totals->cacheable = !capture.active;
      record->totals_state = std::move(totals);
    }
    RankLaunch& plan = plans[i];
    plan = impl.base_launch(static_cast<int>(i));
    plan.totals = record->totals();
    const p::OpContext ctx =
        impl.context(static_cast<int>(i), channels, shape.kind, shape.hidden, record->num_experts,
                     shape.rdma_chunk, shape.nvl_chunk, shape.fingerprint);
    plan.notify.ctx = ctx;
    plan.notify.num_topk = shape.num_topk;
    plan.notify.send_to_rank = record->send_to_rank();
    plan.notify.send_to_node = record->send_to_node();
    plan.notify.recv_count = record->recv_count();
    plan.notify.fwd_count = record->fwd_count();
    plan.dispatch.ctx = ctx;
    plan.dispatch.counts = record->routing();
    plan.dispatch.in_rank = record->in_rank->data();
    plan.dispatch.num_tokens = record->num_tokens;
    plan.dispatch.num_topk = record->num_topk;
    records[i] = std::move(record);
  }
  if (cached == nullptr && shape.has_caller_stream) {
    const auto caller = static_cast<cudaStream_t>(shape.caller_stream);
    if (caller != stream) {
      DeviceEvent copied(impl.options.device);  // destroyed at once: CUDA keeps it until the wait has passed
      copied.record(stream);
      check(cudaStreamWaitEvent(caller, copied.get(), 0), "the caller's stream waits for the routing's copy");
    }
  }
  // A captured operation's graph reads its records at every launch, whoever else lets go of them.
  if (capture.active) {
    for (const auto& record : records) impl.keeper.keep(record);
  }
  if (cached == nullptr) {
    impl.launch(reinterpret_cast<const void*>(&notify_kernel), "notify", plans, KernelShape{}, 1,
                kNotifyThreads, notify_shared_bytes(full), stream, capture);
  }
  if (worst <= 0 && cached == nullptr) {
    impl.wait(stream, operation.number());  // the counts size the outputs
    impl.raise_failures(operation.number());
  }

  std::vector<DeviceDispatchResult> results(count);
  const std::size_t row_bytes = static_cast<std::size_t>(shape.hidden) * p::element_bytes(shape.kind);
  const bool with_topk = cached == nullptr;
  for (std::size_t i = 0; i < count; ++i) {
    DeviceRecord& record = *records[i];
    // Known without reading here: sized by counts, this dispatch (or the one a cached dispatch repeats)
    // waited for them.
    const std::int64_t rows = worst > 0 ? worst : record.num_recv();
    record.record_capacity = rows;
    record.fwd_capacity = worst > 0 ? L * worst : record.num_forwarded();
    record.recv_src_rank = DeviceArray<std::int32_t>(rows, where.stream, true, where.owner);
    record.recv_src_token = DeviceArray<std::int32_t>(rows, where.stream, true, where.owner);
    record.fwd_token = DeviceArray<std::int32_t>(record.fwd_capacity, where.stream, true, where.owner);
    record.fwd_mask = DeviceArray<std::uint32_t>(record.fwd_capacity, where.stream, true, where.owner);

    struct Outputs {
      DeviceArray<std::byte> x;
      DeviceArray<float> scales;
      DeviceArray<std::int64_t> topk_idx;
      DeviceArray<float> topk_weights;
    };
    auto outputs = std::make_shared<Outputs>();
    DeviceOutputs out;
    const std::int64_t scale_count =
        shape.kind == p::PayloadKind::fp8_e4m3 ? rows * p::scale_blocks(shape.hidden) : 0;
    const std::int64_t topk_count = with_topk ? rows * shape.num_topk : 0;
    if (inputs[i].allocate) {
      out = inputs[i].allocate(rows);
    } else {
      outputs->x = DeviceArray<std::byte>(rows * row_bytes, where.stream, true, where.owner);
      outputs->scales = DeviceArray<float>(scale_count, where.stream, true, where.owner);
      outputs->topk_idx = DeviceArray<std::int64_t>(topk_count, where.stream, true, where.owner);
      outputs->topk_weights = DeviceArray<float>(topk_count, where.stream, true, where.owner);
      out = {outputs->x.data(), outputs->scales.data(), outputs->topk_idx.data(),
             outputs->topk_weights.data()};
      if (capture.active) impl.keeper.keep(outputs);
    }
    auto fill = [&](void* data, int value, std::size_t bytes, const char* what) {
      if (data != nullptr && bytes > 0) check(cudaMemsetAsync(data, value, bytes, stream), what);
    };
    if (worst <= 0 && impl.options.poison_outputs) {
      fill(out.recv_x, 0xab, rows * row_bytes, "poison recv_x");
      fill(out.recv_x_scales, 0xab, scale_count * sizeof(float), "poison recv_x_scales");
      fill(out.recv_topk_idx, 0xab, topk_count * sizeof(std::int64_t), "poison recv_topk_idx");
      fill(out.recv_topk_weights, 0xab, topk_count * sizeof(float), "poison recv_topk_weights");
    }
    if (worst > 0) {  // rows past the received ones read as zeros, their expert ids as -1
      fill(out.recv_x, 0, rows * row_bytes, "zero recv_x");
      fill(out.recv_x_scales, 0, scale_count * sizeof(float), "zero recv_x_scales");
      fill(out.recv_topk_idx, 0xff, topk_count * sizeof(std::int64_t), "recv_topk_idx = -1");
      fill(out.recv_topk_weights, 0, topk_count * sizeof(float), "zero recv_topk_weights");
    }
    DeviceDispatchResult& result = results[i];
    result.storage = outputs;
    result.recv_x = out.recv_x;
    result.recv_x_scales = out.recv_x_scales;
    result.recv_topk_idx = out.recv_topk_idx;
    result.recv_topk_weights = out.recv_topk_weights;
    result.rows = rows;
    result.num_recv = worst > 0 ? -1 : record.num_recv();
    result.record = records[i];

    p::DispatchPlan& plan = plans[i].dispatch;
    if (static_cast<int>(i) == shape.absent_rank) plan.ctx.topo.num_channels = 0;  // its blocks leave at once
    plan.format = p::dispatch_format(shape.kind, shape.hidden, with_topk ? shape.num_topk : 0);
    plan.x = inputs[i].x;
    plan.x_scales = inputs[i].x_scales;
    plan.topk_idx = record.topk_idx->data();
    plan.topk_weights = inputs[i].topk_weights;
    plan.with_topk = with_topk;
    plan.capacity = rows;
    plan.record_capacity = rows;
    plan.recv_x = result.recv_x;
    plan.recv_x_scales = result.recv_x_scales;
    plan.recv_topk_idx = result.recv_topk_idx;
    plan.recv_topk_weights = result.recv_topk_weights;
    plan.recv_src_rank = record.recv_src_rank.data();
    plan.recv_src_token = record.recv_src_token.data();
    plan.fwd_token = record.fwd_token.data();
    plan.fwd_mask = record.fwd_mask.data();
    plan.fwd_capacity = record.fwd_capacity;
  }
  const KernelShape kernel_shape = dispatch_shape(full, impl.options);
  impl.launch(reinterpret_cast<const void*>(&dispatch_kernel), "dispatch", plans, kernel_shape,
              kernel_shape.blocks_per_rank, kernel_shape.threads, shared_bytes(kernel_shape), stream,
              capture);
  return results;
}

void DeviceEngine::combine(const DeviceCombineShape& shape, const std::vector<DeviceCombineInput>& inputs,
                           void* stream_handle) {
  Impl& impl = *impl_;
  auto stream = static_cast<cudaStream_t>(stream_handle);
  DeviceScope scope(impl.options.device);
  const std::size_t count = impl.ranks.size();
  if (inputs.size() != count) fail(Errc::invalid_argument, "DeviceEngine::combine: one input per rank");
  for (const DeviceCombineInput& in : inputs) {
    if (!in.record)
      fail(Errc::invalid_argument, "DeviceEngine::combine: an input without its dispatch's record");
  }
  impl.refuse_if_stopped();
  impl.keeper.collect();
  const Capture capture = capture_of(stream);
  // While the operation is captured, the set-up it does off the captured stream (allocating on the engine's
  // own stream and synchronising that stream) counts as "potentially unsafe" in the caller's capture mode.
  const transport::detail::RelaxedCaptureMode relaxed(capture.active);
  Impl::Operation operation(impl, stream, capture);
  std::vector<RankLaunch> plans(count);
  for (std::size_t i = 0; i < count; ++i) {
    const DeviceCombineInput& in = inputs[i];
    const DeviceRecord& record = *in.record;
    if (capture.active) impl.keeper.keep(in.record);  // the graph reads it at every launch
    RankLaunch& launch = plans[i];
    launch = impl.base_launch(static_cast<int>(i));
    p::CombinePlan& plan = launch.combine;
    plan.ctx = impl.context(static_cast<int>(i), record.channels, shape.kind, shape.hidden,
                            record.num_experts, shape.rdma_chunk, shape.nvl_chunk, shape.fingerprint);
    plan.counts = record.routing();
    const bool with_weights = in.out_weights != nullptr;
    plan.format = p::combine_format(shape.kind, shape.hidden, with_weights ? record.num_topk : 0);
    plan.y = in.y;
    plan.y_weights = with_weights ? in.y_weights : nullptr;
    plan.recv_src_token = record.recv_src_token.data();
    plan.fwd_token = record.fwd_token.data();
    plan.fwd_mask = record.fwd_mask.data();
    plan.capacity = record.record_capacity;  // y has these rows too (the handle's recv_rows)
    plan.fwd_capacity = record.fwd_capacity;
    plan.in_rank = record.in_rank->data();
    plan.num_tokens = record.num_tokens;
    plan.out = in.out;
    plan.bias = in.bias;
    plan.out_weights = in.out_weights;
  }
  const KernelShape kernel_shape = combine_shape(impl.layout.params.topo, impl.options);
  impl.launch(reinterpret_cast<const void*>(&combine_kernel), "combine", plans, kernel_shape,
              kernel_shape.blocks_per_rank, kernel_shape.threads, shared_bytes(kernel_shape), stream,
              capture);
}

std::uint32_t DeviceEngine::last_operation() const {
  return impl_->operations;
}

void DeviceEngine::raise_failures(std::uint32_t operation) {
  impl_->raise_failures(operation);
}

void DeviceEngine::stop_at(std::uint32_t operation, const Error& error) {
  impl_->stop_at(operation, error);
}

void DeviceEngine::release_launches() {
  DeviceScope scope(impl_->options.device, std::nothrow);
  impl_->keeper.collect();
}

void DeviceEngine::keep_stream_alive(void* stream, std::shared_ptr<void> owner) {
  std::lock_guard lock(impl_->streams_mutex);
  impl_->stream_owners[static_cast<cudaStream_t>(stream)] = std::move(owner);
}

void DeviceEngine::finish(void* stream_handle, std::vector<DeviceDispatchResult>* results) {
  Impl& impl = *impl_;
  auto stream = static_cast<cudaStream_t>(stream_handle);
  DeviceScope scope(impl.options.device);
  if (capture_of(stream).active) {
    fail(
        Errc::invalid_argument,
        "DeviceEngine::finish waits on the host, and the stream is being captured into a CUDA graph: end the "
        "capture, launch the graph, then finish on the stream it ran on");
  }
  const std::uint32_t last = impl.operations;
  impl.wait(stream, last);
  impl.keeper.collect();
  impl.raise_failures(last);
  if (results == nullptr) return;
  for (DeviceDispatchResult& result : *results) result.num_recv = result.record->num_recv();
}

void DeviceEngine::wait_for(const std::function<bool()>& passed, const std::string& what) {
  DeviceScope scope(impl_->options.device);
  impl_->wait_until(passed, what);
}

std::int64_t DeviceEngine::received(const DeviceRecord& record) const {
  DeviceScope scope(impl_->options.device);
  return record.totals_state->read(impl_->own_stream)[0];
}

void DeviceEngine::read(void* host, const void* device, std::size_t bytes) const {
  if (bytes == 0) return;
  DeviceScope scope(impl_->options.device);
  check(cudaMemcpyAsync(host, device, bytes, cudaMemcpyDeviceToHost, impl_->own_stream), "read back");
  check(cudaStreamSynchronize(impl_->own_stream), "read back");
}

std::vector<DeviceTraffic> DeviceEngine::traffic() const {
  DeviceScope scope(impl_->options.device);
  const std::vector<p::Traffic> all =
      read_back(impl_->traffic.data(), static_cast<std::int64_t>(3 * impl_->ranks.size()), impl_->own_stream);
  std::vector<DeviceTraffic> per_rank(impl_->ranks.size());
  for (std::size_t i = 0; i < per_rank.size(); ++i)
    per_rank[i] = {all[3 * i], all[3 * i + 1], all[3 * i + 2]};
  return per_rank;
}

}  // namespace ferry::kernels::cuda
