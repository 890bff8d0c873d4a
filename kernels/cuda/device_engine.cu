// The host side of the CUDA executor: plans in device memory, role groups per block, the three launches, and
// the reading back of counts, traffic and failure records.
#include "ferry/kernels/cuda/device_engine.hpp"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <map>
#include <mutex>
#include <thread>

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

struct DeviceRecord {
  int rank = 0;
  int channels = 0;
  std::int64_t num_tokens = 0;
  int num_topk = 0;
  std::int64_t num_experts = 0;
  int num_ranks = 0;
  int num_nodes = 0;
  // The routing, copied at the call, and the counts: shared by the cached dispatches that repeat it.
  std::shared_ptr<DeviceArray<std::int64_t>> topk_idx;
  std::shared_ptr<DeviceArray<std::uint8_t>> in_rank;
  std::shared_ptr<DeviceArray<std::int64_t>> counts;  // send_to_rank | recv_count | recv_offset | (per node:)
                                                      // send_to_node | fwd_count | fwd_offset
  // This dispatch's placements.
  DeviceArray<std::int32_t> recv_src_rank;
  DeviceArray<std::int32_t> recv_src_token;
  DeviceArray<std::int32_t> fwd_token;
  DeviceArray<std::uint32_t> fwd_mask;
  std::int64_t record_capacity = 0;
  std::int64_t fwd_capacity = 0;

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
  std::int64_t num_recv() const { return read_totals()[0]; }
  std::int64_t num_forwarded() const { return read_totals()[1]; }
  // In the order of the stream the notify ran on (a legacy-stream copy would not wait for a non-blocking
  // stream), once; any thread may ask (the thread that waits on the dispatch, the one that issues a cached
  // dispatch).
  const std::int64_t* read_totals() const {
    std::lock_guard lock(totals_mutex);
    if (totals_known) return totals_read;
    DeviceScope scope(device);
    check(cudaMemcpyAsync(totals_read, totals(), sizeof(totals_read), cudaMemcpyDeviceToHost, stream),
          "read back the counts");
    check(cudaStreamSynchronize(stream), "read back the counts");
    totals_known = true;
    return totals_read;
  }
  void set_totals(std::int64_t received, std::int64_t forwarded) {
    std::lock_guard lock(totals_mutex);
    totals_read[0] = received;
    totals_read[1] = forwarded;
    totals_known = true;
  }
  int device = 0;
  cudaStream_t stream = nullptr;  // the dispatch's (kept alive by the arrays' stream owner)
  mutable std::mutex totals_mutex;
  mutable std::int64_t totals_read[2] = {0, 0};
  mutable bool totals_known = false;

  p::RoutingCounts routing() const {
    return {recv_count(), recv_offset(), fwd_count(), fwd_offset(), send_to_rank(), send_to_node()};
  }
};

namespace {

template <class T>
std::vector<T> read_back(const T* device, std::int64_t count) {
  std::vector<T> host(static_cast<std::size_t>(std::max<std::int64_t>(count, 0)));
  if (!host.empty())
    check(cudaMemcpy(host.data(), device, host.size() * sizeof(T), cudaMemcpyDeviceToHost), "read back");
  return host;
}

}  // namespace

std::vector<std::int32_t> device_recv_src_rank(const DeviceRecord& record) {
  return read_back(record.recv_src_rank.data(), std::min(record.num_recv(), record.record_capacity));
}
std::vector<std::int32_t> device_recv_src_token(const DeviceRecord& record) {
  return read_back(record.recv_src_token.data(), std::min(record.num_recv(), record.record_capacity));
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

struct DeviceEngine::Impl {
  p::BufferLayout layout;
  DeviceOptions options;
  std::vector<DeviceRank> ranks;
  int sm_count = 0;
  DeviceArray<p::BufferLayout> device_layout;
  std::vector<DeviceArray<std::byte*>> peers;                  // per rank: [L]
  std::vector<DeviceArray<transport::CommandRingView>> rings;  // per rank
  MappedArray<DeviceReport> reports;                           // per rank
  DeviceArray<std::uint32_t> claims;                           // per rank: a record was written (for good)
  DeviceArray<p::Traffic> traffic;                             // per rank: [3]
  DeviceArray<std::uint32_t> abort;  // zeroed once: a failure stops the executor for good
  std::uint32_t operations = 0;      // sequence number of the last operation (the same on every rank)
  // The launch plans of each operation and their pinned staging, until that operation's own event.
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

  // An array freed in `stream`'s order, holding the stream's owner.
  template <class T>
  std::shared_ptr<DeviceArray<T>> ordered_array(std::size_t count, cudaStream_t stream) {
    return std::make_shared<DeviceArray<T>>(count, stream, true, owner_of(stream));
  }

  // Copies the launch plans to the device and launches `kernel` cooperatively. The device copy and the pinned
  // staging it is copied from stay with the current operation until its own event has passed.
  void launch(const void* kernel, const char* name, const std::vector<RankLaunch>& plans,
              const KernelShape& shape, int blocks_per_rank, int threads, std::uint32_t shared,
              cudaStream_t stream) {
    const int blocks = blocks_per_rank * static_cast<int>(plans.size());
    if (shared > 48 * 1024) {
      check(
          cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)),
          name);
    }
    int per_sm = 0;
    check(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, threads, shared), name);
    if (per_sm * sm_count < blocks) {
      fail(Errc::invalid_argument,
           std::string(name) + ": " + std::to_string(blocks) + " blocks of " + std::to_string(threads) +
               " threads and " + std::to_string(shared) +
               " bytes of shared memory must all be resident at once, but the GPU holds " +
               std::to_string(per_sm) + " per SM x " + std::to_string(sm_count) +
               " SMs: use fewer ranks per GPU or a smaller num_sms");
    }
    auto device_plans = ordered_array<RankLaunch>(plans.size(), stream);
    keeper.keep(device_plans);
    const std::shared_ptr<MappedArray<RankLaunch>> staged = keeper.stage(
        plans.size(), [](std::size_t size) { return std::make_shared<MappedArray<RankLaunch>>(size); });
    std::copy(plans.begin(), plans.end(), staged->host());
    check(cudaMemcpyAsync(device_plans->data(), staged->host(), sizeof(RankLaunch) * plans.size(),
                          cudaMemcpyHostToDevice, stream),
          "copy of the launch plans");

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

  // One dispatch or combine: its sequence number, and, when it ends (returned or threw after enqueueing
  // something), an event after everything it enqueued, which tells the keeper when to let go.
  class Operation {
   public:
    Operation(Impl& impl, cudaStream_t stream) : impl_(impl), stream_(stream) {
      impl.keeper.begin();
      number_ = ++impl.operations;
    }
    ~Operation() {
      try {
        auto event = std::make_shared<DeviceEvent>(impl_.options.device);
        event->record(stream_);
        impl_.keeper.end([event] { return event->passed(); });
      } catch (...) {  // no event: held until the stream is drained (finish) or the engine goes
        impl_.keeper.end({});
      }
    }
    Operation(const Operation&) = delete;
    Operation& operator=(const Operation&) = delete;
    std::uint32_t number() const { return number_; }

   private:
    Impl& impl_;
    cudaStream_t stream_;
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

  // Waits for everything enqueued on `stream`, bounded; a CUDA error or the deadline stops the executor at
  // operation `number`.
  void wait(cudaStream_t stream, std::uint32_t number) {
    try {
      // The kernels end by themselves (every spin has a deadline); this bounds the host's wait all the same.
      Deadline deadline(options.timeout * 2 + std::chrono::seconds(10));
      Backoff backoff;
      while (true) {
        const cudaError_t status = cudaStreamQuery(stream);
        if (status == cudaSuccess) break;
        if (status != cudaErrorNotReady) check(status, "the executor's kernels");
        if (deadline.expired()) fail(Errc::timeout, "cuda: the executor's kernels did not finish in time");
        backoff.pause();
      }
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
    // A little over what ptxas reported, rounded: the reservation is per resident thread (2048 per SM), so
    // every byte here costs the device about 270 KB of memory on an H100.
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
  // Per-operation arrays come from the device's pool in stream order; keep freed memory there for the next
  // one.
  cudaMemPool_t pool = nullptr;
  check(cudaDeviceGetDefaultMemPool(&pool, options.device), "cudaDeviceGetDefaultMemPool");
  std::uint64_t keep = ~std::uint64_t{0};
  check(cudaMemPoolSetAttribute(pool, cudaMemPoolAttrReleaseThreshold, &keep), "cudaMemPoolSetAttribute");

  impl.device_layout = DeviceArray<p::BufferLayout>(1);
  check(cudaMemcpy(impl.device_layout.data(), &impl.layout, sizeof(p::BufferLayout), cudaMemcpyHostToDevice),
        "copy of the buffer layout");
  const int L = layout.params.topo.local_size;
  const std::size_t expected_rings =
      static_cast<std::size_t>(device_rings_per_rank(layout.params.topo, options));
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
    if (layout.params.topo.num_nodes > 1 && rank.rings.empty()) {
      fail(Errc::invalid_argument, "DeviceEngine: rank " + std::to_string(rank.rank) +
                                       " has peers on other nodes but no command rings to reach them");
    }
    DeviceArray<std::byte*> peers(L);
    check(cudaMemcpy(peers.data(), rank.node_peers.data(), sizeof(std::byte*) * L, cudaMemcpyHostToDevice),
          "copy of the node peers");
    impl.peers.push_back(std::move(peers));
    DeviceArray<transport::CommandRingView> views(rank.rings.size());
    if (!rank.rings.empty()) {
      check(cudaMemcpy(views.data(), rank.rings.data(),
                       sizeof(transport::CommandRingView) * rank.rings.size(), cudaMemcpyHostToDevice),
            "copy of the command ring views");
    }
    impl.rings.push_back(std::move(views));
  }
  impl.reports = MappedArray<DeviceReport>(impl.ranks.size());
  impl.claims = DeviceArray<std::uint32_t>(impl.ranks.size());
  check(cudaMemset(impl.claims.data(), 0, sizeof(std::uint32_t) * impl.ranks.size()), "cudaMemset(claims)");
  impl.traffic = DeviceArray<p::Traffic>(3 * impl.ranks.size());
  check(cudaMemset(impl.traffic.data(), 0, sizeof(p::Traffic) * 3 * impl.ranks.size()),
        "cudaMemset(traffic)");
  impl.abort = DeviceArray<std::uint32_t>(1);
  check(cudaMemset(impl.abort.data(), 0, sizeof(std::uint32_t)), "cudaMemset(abort)");
  Impl::reserve_stacks();
  check(cudaDeviceSynchronize(), "the executor's setup");  // the memsets above ran on the legacy stream
}

// Nothing the kernels still use may go: waits (bounded, the kernels end by themselves) for every operation
// still held.
DeviceEngine::~DeviceEngine() {
  DeviceScope scope(impl_->options.device, std::nothrow);
  Deadline deadline(impl_->options.timeout * 2 + std::chrono::seconds(10));
  Backoff backoff;
  while (impl_->keeper.collect() > 0 && !deadline.expired()) backoff.pause();
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
  impl.refuse_if_stopped();
  const p::Topology full = impl.layout.params.topo;
  const int channels =
      cached != nullptr ? (*cached)[0]->channels : (shape.channels > 0 ? shape.channels : full.num_channels);
  if (channels > full.num_channels) {
    fail(Errc::invalid_argument, "a dispatch on " + std::to_string(channels) +
                                     " channels on a buffer laid out for " +
                                     std::to_string(full.num_channels));
  }
  const int R = full.num_ranks(), N = full.num_nodes, L = full.local_size;
  const std::int64_t worst = shape.num_worst_tokens;
  const std::shared_ptr<void> stream_owner = impl.owner_of(stream);
  Impl::Operation operation(impl, stream);

  std::vector<std::shared_ptr<DeviceRecord>> records(count);
  std::vector<RankLaunch> plans(count);
  for (std::size_t i = 0; i < count; ++i) {
    const DeviceDispatchInput& in = inputs[i];
    auto record = std::make_shared<DeviceRecord>();
    record->device = impl.options.device;
    record->stream = stream;
    if (cached != nullptr) {
      const DeviceRecord& old = *(*cached)[i];
      record->rank = old.rank;
      record->channels = old.channels;
      record->num_tokens = old.num_tokens;
      record->num_topk = old.num_topk;
      record->num_experts = old.num_experts;
      record->num_ranks = R;
      record->num_nodes = N;
      record->topk_idx = old.topk_idx;
      record->in_rank = old.in_rank;
      record->counts = old.counts;
      record->set_totals(old.num_recv(), old.num_forwarded());
    } else {
      record->rank = impl.ranks[i].rank;
      record->channels = channels;
      record->num_tokens = in.num_tokens;
      record->num_topk = shape.num_topk;
      record->num_experts = shape.num_experts;
      record->num_ranks = R;
      record->num_nodes = N;
      record->topk_idx = impl.ordered_array<std::int64_t>(in.num_tokens * shape.num_topk, stream);
      record->in_rank = impl.ordered_array<std::uint8_t>(in.num_tokens * R, stream);
      // Taken at the call: the routing the roles read cannot change under them.
      if (in.num_tokens > 0) {
        check(cudaMemcpyAsync(record->topk_idx->data(), in.topk_idx,
                              sizeof(std::int64_t) * in.num_tokens * shape.num_topk, cudaMemcpyDeviceToDevice,
                              stream),
              "copy of topk_idx");
        check(cudaMemcpyAsync(record->in_rank->data(), in.in_rank,
                              static_cast<std::size_t>(in.num_tokens) * R, cudaMemcpyDeviceToDevice, stream),
              "copy of the layout");
      }
      record->counts = impl.ordered_array<std::int64_t>(3 * (R + N) * channels + 2, stream);
      record->counts->zero(stream);
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
  if (cached == nullptr) {
    impl.launch(reinterpret_cast<const void*>(&notify_kernel), "notify", plans, KernelShape{}, 1,
                kNotifyThreads, notify_shared_bytes(full), stream);
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
    const std::int64_t rows = worst > 0 ? worst : record.num_recv();
    record.record_capacity = rows;
    record.fwd_capacity = worst > 0 ? L * worst : record.num_forwarded();
    record.recv_src_rank = DeviceArray<std::int32_t>(rows, stream, true, stream_owner);
    record.recv_src_token = DeviceArray<std::int32_t>(rows, stream, true, stream_owner);
    record.fwd_token = DeviceArray<std::int32_t>(record.fwd_capacity, stream, true, stream_owner);
    record.fwd_mask = DeviceArray<std::uint32_t>(record.fwd_capacity, stream, true, stream_owner);

    struct Outputs {
      DeviceArray<std::byte> x;
      DeviceArray<float> scales;
      DeviceArray<std::int64_t> topk_idx;
      DeviceArray<float> topk_weights;
    };
    auto outputs = std::make_shared<Outputs>();
    DeviceOutputs where;
    const std::int64_t scale_count =
        shape.kind == p::PayloadKind::fp8_e4m3 ? rows * p::scale_blocks(shape.hidden) : 0;
    const std::int64_t topk_count = with_topk ? rows * shape.num_topk : 0;
    if (inputs[i].allocate) {
      where = inputs[i].allocate(rows);
    } else {
      outputs->x = DeviceArray<std::byte>(rows * row_bytes, stream, true, stream_owner);
      outputs->scales = DeviceArray<float>(scale_count, stream, true, stream_owner);
      outputs->topk_idx = DeviceArray<std::int64_t>(topk_count, stream, true, stream_owner);
      outputs->topk_weights = DeviceArray<float>(topk_count, stream, true, stream_owner);
      where = {outputs->x.data(), outputs->scales.data(), outputs->topk_idx.data(),
               outputs->topk_weights.data()};
    }
    auto fill = [&](void* data, int value, std::size_t bytes, const char* what) {
      if (data != nullptr && bytes > 0) check(cudaMemsetAsync(data, value, bytes, stream), what);
    };
    if (worst <= 0 && impl.options.poison_outputs) {
      fill(where.recv_x, 0xab, rows * row_bytes, "poison recv_x");
      fill(where.recv_x_scales, 0xab, scale_count * sizeof(float), "poison recv_x_scales");
      fill(where.recv_topk_idx, 0xab, topk_count * sizeof(std::int64_t), "poison recv_topk_idx");
      fill(where.recv_topk_weights, 0xab, topk_count * sizeof(float), "poison recv_topk_weights");
    }
    if (worst > 0) {  // rows past the received ones read as zeros, their expert ids as -1
      fill(where.recv_x, 0, rows * row_bytes, "zero recv_x");
      fill(where.recv_x_scales, 0, scale_count * sizeof(float), "zero recv_x_scales");
      fill(where.recv_topk_idx, 0xff, topk_count * sizeof(std::int64_t), "recv_topk_idx = -1");
      fill(where.recv_topk_weights, 0, topk_count * sizeof(float), "zero recv_topk_weights");
    }
    DeviceDispatchResult& result = results[i];
    result.storage = outputs;
    result.recv_x = where.recv_x;
    result.recv_x_scales = where.recv_x_scales;
    result.recv_topk_idx = where.recv_topk_idx;
    result.recv_topk_weights = where.recv_topk_weights;
    result.rows = rows;
    result.num_recv = worst > 0 && cached == nullptr ? -1 : record.num_recv();
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
              kernel_shape.blocks_per_rank, kernel_shape.threads, shared_bytes(kernel_shape), stream);
  return results;
}

void DeviceEngine::combine(const DeviceCombineShape& shape, const std::vector<DeviceCombineInput>& inputs,
                           void* stream_handle) {
  Impl& impl = *impl_;
  auto stream = static_cast<cudaStream_t>(stream_handle);
  DeviceScope scope(impl.options.device);
  const std::size_t count = impl.ranks.size();
  if (inputs.size() != count) fail(Errc::invalid_argument, "DeviceEngine::combine: one input per rank");
  impl.refuse_if_stopped();
  Impl::Operation operation(impl, stream);
  std::vector<RankLaunch> plans(count);
  for (std::size_t i = 0; i < count; ++i) {
    const DeviceCombineInput& in = inputs[i];
    const DeviceRecord& record = *in.record;
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
    plan.in_rank = record.in_rank->data();
    plan.num_tokens = record.num_tokens;
    plan.out = in.out;
    plan.bias = in.bias;
    plan.out_weights = in.out_weights;
  }
  const KernelShape kernel_shape = combine_shape(impl.layout.params.topo, impl.options);
  impl.launch(reinterpret_cast<const void*>(&combine_kernel), "combine", plans, kernel_shape,
              kernel_shape.blocks_per_rank, kernel_shape.threads, shared_bytes(kernel_shape), stream);
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
  const std::uint32_t last = impl.operations;
  impl.wait(stream, last);
  impl.keeper.collect();
  impl.raise_failures(last);
  if (results == nullptr) return;
  for (DeviceDispatchResult& result : *results) result.num_recv = result.record->num_recv();
}

std::vector<DeviceTraffic> DeviceEngine::traffic() const {
  DeviceScope scope(impl_->options.device);
  const std::vector<p::Traffic> all =
      read_back(impl_->traffic.data(), static_cast<std::int64_t>(3 * impl_->ranks.size()));
  std::vector<DeviceTraffic> per_rank(impl_->ranks.size());
  for (std::size_t i = 0; i < per_rank.size(); ++i)
    per_rank[i] = {all[3 * i], all[3 * i + 1], all[3 * i + 2]};
  return per_rank;
}

}  // namespace ferry::kernels::cuda
