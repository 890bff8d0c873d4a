// The host side of the low-latency mode's CUDA executor (ferry/kernels/cuda/low_latency_engine.hpp): what
// each rank's kernels share, the phases of each half in stream order, failure records, and the virtual
// cluster.
#include <algorithm>
#include <optional>
#include <string>

#include "../host/src/describe.hpp"
#include "device_memory.cuh"
#include "ferry/core/error.hpp"
#include "ferry/kernels/cuda/device_engine.hpp"
#include "ferry/transport/device_copy.hpp"
#include "ferry/transport/proxy.hpp"
#include "low_latency_kernels.cuh"

namespace ferry::kernels::cuda {

namespace p = protocol;

namespace {

[[noreturn]] void throw_low_latency_report(const DeviceReport& report, Duration timeout) {
  const std::string where =
      "GPU rank " + std::to_string(report.rank) + " " + host::stage_name(static_cast<p::Stage>(report.stage));
  switch (static_cast<DeviceFailure>(report.failure)) {
    case DeviceFailure::timeout:
      fail(Errc::timeout, where + ": no progress for " + host::seconds_text(timeout) + "; waits for rank " +
                              std::to_string(report.wait.peer_rank) + " (word " +
                              std::to_string(report.wait.head) + ", wants " +
                              std::to_string(report.wait.tail) + ")");
    case DeviceFailure::fault:
      if (report.fault.kind == p::FaultKind::bad_expert) {
        fail(Errc::invalid_argument, where + ": topk_idx of token " + std::to_string(report.fault.token) +
                                         " names expert " + std::to_string(report.fault.got) +
                                         ", outside [0, " + std::to_string(report.fault.expected) +
                                         "), or one expert twice (the token was sent to its other experts)");
      }
      fail(Errc::protocol, where + " received " + host::describe_low_latency_fault(report.fault));
    case DeviceFailure::proxy:
      fail(Errc::peer_failure, where + ": its command ring failed (code " +
                                   std::to_string(report.proxy_error) +
                                   "); see the proxy's error on the host");
    case DeviceFailure::none:
      break;
  }
  fail(Errc::internal, where + ": a failure record without a failure");
}

cudaStream_t as_stream(void* stream) {
  return static_cast<cudaStream_t>(stream);
}

}  // namespace

struct LowLatencyDeviceEngine::Impl {
  p::Topology topo;
  LowLatencyDeviceOptions options;
  std::vector<LowLatencyDeviceRank> ranks;
  std::vector<DeviceArray<std::byte*>> node_peers;  // per rank: [L]
  DeviceArray<LowLatencyRankStatic> statics;        // per rank
  DeviceArray<std::uint32_t> aborts;                // per rank: kAbortWords (abort word, heartbeat)
  DeviceArray<std::uint64_t> sequences;             // per rank: kLowLatencySequenceWords
  MappedArray<DeviceReport> reports;                // per rank
  std::uint64_t last_timeout_ns = 0;                // the longest phase timeout launched, for the messages

  const LowLatencyRankStatic* rank_static(std::size_t i) const { return statics.data() + i; }
  // A phase gives up after the engine's timeout, but never before the host executor would for the same
  // context (low_latency_stuck_after_ns): a silent peer is masked, not reported as a timeout, on both.
  std::uint64_t timeout_ns(const p::LowLatencyContext& ctx) {
    const auto engine = static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(options.timeout).count());
    const std::uint64_t timeout = std::max(engine, p::low_latency_stuck_after_ns(ctx.mask_after_ns));
    last_timeout_ns = std::max(last_timeout_ns, timeout);
    return timeout;
  }
  // The bulk phases: blocks_per_rank blocks of groups; the posting phases: one block of up to
  // kLowLatencyRings.
  LowLatencyLaunch bulk(const p::LowLatencyContext& ctx) {
    return {options.blocks_per_rank, options.groups_per_block, options.warps_per_group, timeout_ns(ctx)};
  }
  LowLatencyLaunch posting(const p::LowLatencyContext& ctx) {
    return {1, std::min(options.groups_per_block, kLowLatencyRings), options.warps_per_group,
            timeout_ns(ctx)};
  }

  // One plan per rank, all of one operation (the kernels number it from the buffer parity the host gave it),
  // of a shape whose puts fit the proxy's 32-bit sizes.
  template <class Plan>
  void check_plans(const std::vector<Plan>& plans) const {
    if (plans.size() != ranks.size()) {
      fail(Errc::invalid_argument, "low-latency device engine: " + std::to_string(plans.size()) +
                                       " plans for its " + std::to_string(ranks.size()) + " ranks");
    }
    for (const Plan& plan : plans) {
      if (plan.ctx.operation != plans.front().ctx.operation) {
        fail(Errc::invalid_argument, "low-latency device engine: plans of operations " +
                                         std::to_string(plans.front().ctx.operation) + " and " +
                                         std::to_string(plan.ctx.operation) + " in one call");
      }
      if (p::low_latency_largest_put(plan.ctx.layout) > p::kLowLatencyMaxPutBytes) {
        fail(Errc::invalid_argument, "low-latency device engine: one expert's block of " +
                                         std::to_string(plan.ctx.layout.T()) + " messages is " +
                                         std::to_string(p::low_latency_largest_put(plan.ctx.layout)) +
                                         " bytes, beyond the 32-bit size of a fabric put");
      }
    }
  }

  // The start of a send half: a new operation, so no rank is aborted any more, and its number taken from
  // each rank's sequence on the device (a graph replay is the next operation).
  template <class Plan>
  cudaStream_t begin_send(const std::vector<Plan>& plans, void* stream) {
    check_plans(plans);
    const cudaStream_t s = as_stream(stream);
    launch_begin_operation(statics.data(), static_cast<int>(plans.size()), plans.front().ctx.buffer, s);
    return s;
  }

  // Launch shapes the phase kernels cannot run (ptxas's registers per thread bound the block) are refused
  // here by name instead of failing the first launch; the kernels' stacks are reserved once, now (left to
  // the first launch, the driver grows them then and synchronises the device in the middle of it).
  void check_kernels() const {
    const int threads = options.groups_per_block * options.warps_per_group * 32;
    std::size_t stack = 0;
    for (const LowLatencyKernelAttributes& kernel : low_latency_kernel_attributes()) {
      stack = std::max(stack, kernel.local_bytes);
      const bool phase =
          std::string(kernel.name).find("_phase") != std::string::npos;  // the others have fixed blocks
      if (phase && threads > kernel.max_threads_per_block) {
        fail(Errc::invalid_argument,
             "low-latency device engine: " + std::to_string(options.groups_per_block) + " groups of " +
                 std::to_string(options.warps_per_group) + " warps are " + std::to_string(threads) +
                 " threads per block, but " + kernel.name + " runs at most " +
                 std::to_string(kernel.max_threads_per_block) + " (its registers per thread)");
      }
    }
    constexpr std::size_t kMargin = 128;  // as DeviceEngine: a little over ptxas's figure, rounded
    stack = (stack + kMargin + 255) / 256 * 256;
    std::size_t current = 0;
    check(cudaDeviceGetLimit(&current, cudaLimitStackSize), "cudaDeviceGetLimit(stack size)");
    if (current < stack)
      check(cudaDeviceSetLimit(cudaLimitStackSize, stack), "cudaDeviceSetLimit(stack size)");
  }
};

LowLatencyDeviceEngine::LowLatencyDeviceEngine(const p::Topology& topo,
                                               std::vector<LowLatencyDeviceRank> ranks,
                                               const LowLatencyDeviceOptions& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& impl = *impl_;
  if (options.groups_per_block < 1 || options.warps_per_group < 1 || options.blocks_per_rank < 1 ||
      options.groups_per_block > 15 || options.groups_per_block * options.warps_per_group > 32) {
    fail(Errc::invalid_argument, "low-latency device engine: " + std::to_string(options.groups_per_block) +
                                     " groups of " + std::to_string(options.warps_per_group) +
                                     " warps per block (1..15 groups, at most 32 warps)");
  }
  check(cudaSetDevice(options.device), "cudaSetDevice");
  impl.topo = topo;
  impl.options = options;
  impl.ranks = std::move(ranks);
  impl.check_kernels();
  const std::size_t count = impl.ranks.size();
  impl.statics = DeviceArray<LowLatencyRankStatic>(count);
  // Each rank's abort word is followed by its heartbeat (device_io.cuh): DeviceIo::progressed writes two
  // words past the abort word, so one word per rank would land in the next rank's abort word.
  impl.aborts = DeviceArray<std::uint32_t>(count * kAbortWords);
  impl.aborts.zero(nullptr);
  impl.sequences = DeviceArray<std::uint64_t>(count * kLowLatencySequenceWords);
  impl.sequences.zero(nullptr);
  impl.reports = MappedArray<DeviceReport>(count);
  std::vector<LowLatencyRankStatic> statics(count);
  for (std::size_t i = 0; i < count; ++i) {
    const LowLatencyDeviceRank& rank = impl.ranks[i];
    if (static_cast<int>(rank.node_peers.size()) != topo.local_size) {
      fail(Errc::invalid_argument, "low-latency device engine: rank " + std::to_string(rank.rank) + " has " +
                                       std::to_string(rank.node_peers.size()) + " node peers, not " +
                                       std::to_string(topo.local_size));
    }
    impl.node_peers.emplace_back(rank.node_peers.size());
    check(cudaMemcpy(impl.node_peers.back().data(), rank.node_peers.data(),
                     sizeof(std::byte*) * rank.node_peers.size(), cudaMemcpyHostToDevice),
          "copy the node peers");
    LowLatencyRankStatic& s = statics[i];
    s.local = rank.region;
    s.node_peers = impl.node_peers.back().data();
    s.rings_present = !rank.rings.empty();
    if (s.rings_present && static_cast<int>(rank.rings.size()) < kLowLatencyRings) {
      fail(Errc::invalid_argument, "low-latency device engine: rank " + std::to_string(rank.rank) + " has " +
                                       std::to_string(rank.rings.size()) + " command rings, needs " +
                                       std::to_string(kLowLatencyRings));
    }
    for (int k = 0; s.rings_present && k < kLowLatencyRings; ++k) s.rings[k] = rank.rings[k];
    s.rank = rank.rank;
    s.report = impl.reports.device() + i;
    s.abort = impl.aborts.data() + i * kAbortWords;
    s.sequence = impl.sequences.data() + i * kLowLatencySequenceWords;
  }
  check(cudaMemcpy(impl.statics.data(), statics.data(), sizeof(LowLatencyRankStatic) * count,
                   cudaMemcpyHostToDevice),
        "copy the ranks' launch records");
  // The set-up above ran on the legacy stream, which a non-blocking stream's kernels do not wait for (and a
  // pageable cudaMemcpy may return before its copy lands): finished here, once.
  check(cudaDeviceSynchronize(), "the low-latency engine's set-up");
}

LowLatencyDeviceEngine::~LowLatencyDeviceEngine() = default;

int LowLatencyDeviceEngine::num_ranks() const {
  return static_cast<int>(impl_->ranks.size());
}

void LowLatencyDeviceEngine::dispatch_send(const std::vector<p::LowLatencyDispatchPlan>& plans,
                                           void* stream) {
  Impl& impl = *impl_;
  const cudaStream_t s = impl.begin_send(plans, stream);
  for (std::size_t i = 0; i < plans.size(); ++i) {
    launch_slots(plans[i], impl.rank_static(i), s);
    launch_context_phase(LowLatencyPhase::acquire, plans[i].ctx, impl.rank_static(i),
                         impl.posting(plans[i].ctx), s);
    launch_dispatch_phase(LowLatencyPhase::dispatch_scatter, plans[i], impl.rank_static(i),
                          impl.bulk(plans[i].ctx), s);
    launch_dispatch_phase(LowLatencyPhase::dispatch_publish, plans[i], impl.rank_static(i),
                          impl.posting(plans[i].ctx), s);
  }
}

void LowLatencyDeviceEngine::dispatch_receive(const std::vector<p::LowLatencyDispatchPlan>& plans,
                                              void* stream) {
  Impl& impl = *impl_;
  impl.check_plans(plans);
  const cudaStream_t s = as_stream(stream);
  for (std::size_t i = 0; i < plans.size(); ++i)
    launch_dispatch_phase(LowLatencyPhase::dispatch_gather, plans[i], impl.rank_static(i),
                          impl.bulk(plans[i].ctx), s);
  for (std::size_t i = 0; i < plans.size(); ++i)
    launch_context_phase(LowLatencyPhase::release, plans[i].ctx, impl.rank_static(i),
                         impl.posting(plans[i].ctx), s);
}

void LowLatencyDeviceEngine::combine_send(const std::vector<p::LowLatencyCombinePlan>& plans, void* stream) {
  Impl& impl = *impl_;
  const cudaStream_t s = impl.begin_send(plans, stream);
  for (std::size_t i = 0; i < plans.size(); ++i) {
    launch_context_phase(LowLatencyPhase::acquire, plans[i].ctx, impl.rank_static(i),
                         impl.posting(plans[i].ctx), s);
    launch_combine_phase(LowLatencyPhase::combine_return, plans[i], impl.rank_static(i),
                         impl.bulk(plans[i].ctx), s);
    launch_combine_phase(LowLatencyPhase::combine_publish, plans[i], impl.rank_static(i),
                         impl.posting(plans[i].ctx), s);
  }
}

void LowLatencyDeviceEngine::combine_receive(const std::vector<p::LowLatencyCombinePlan>& plans,
                                             void* stream) {
  Impl& impl = *impl_;
  impl.check_plans(plans);
  const cudaStream_t s = as_stream(stream);
  for (std::size_t i = 0; i < plans.size(); ++i) {
    launch_combine_phase(LowLatencyPhase::combine_wait, plans[i], impl.rank_static(i),
                         impl.bulk(plans[i].ctx), s);
    launch_combine_phase(LowLatencyPhase::combine_reduce, plans[i], impl.rank_static(i),
                         impl.bulk(plans[i].ctx), s);
  }
  for (std::size_t i = 0; i < plans.size(); ++i)
    launch_context_phase(LowLatencyPhase::release, plans[i].ctx, impl.rank_static(i),
                         impl.posting(plans[i].ctx), s);
}

void LowLatencyDeviceEngine::acquire_staging(const std::vector<p::LowLatencyContext>& contexts,
                                             void* stream) {
  Impl& impl = *impl_;
  if (contexts.size() != impl.ranks.size()) {
    fail(Errc::invalid_argument, "low-latency device engine: " + std::to_string(contexts.size()) +
                                     " contexts for its " + std::to_string(impl.ranks.size()) + " ranks");
  }
  launch_clear_aborts(impl.statics.data(), static_cast<int>(contexts.size()), as_stream(stream));
  for (std::size_t i = 0; i < contexts.size(); ++i)
    launch_context_phase(LowLatencyPhase::acquire_staging, contexts[i], impl.rank_static(i),
                         impl.posting(contexts[i]), as_stream(stream));
}

void LowLatencyDeviceEngine::add_dispatch_stats(const p::LowLatencyDispatchPlan& plan,
                                                std::int32_t* recv_per_local_expert,
                                                std::int64_t* wait_per_source, void* stream) {
  launch_dispatch_stats(plan, recv_per_local_expert, wait_per_source, as_stream(stream));
}

void LowLatencyDeviceEngine::add_combine_stats(const p::LowLatencyCombinePlan& plan,
                                               std::int64_t* wait_per_source, void* stream) {
  launch_combine_stats(plan, wait_per_source, as_stream(stream));
}

void LowLatencyDeviceEngine::clean(const std::vector<p::LowLatencyContext>& contexts, std::uint64_t epoch,
                                   void* stream) {
  Impl& impl = *impl_;
  if (contexts.size() != impl.ranks.size()) {
    fail(Errc::invalid_argument, "low-latency device engine: " + std::to_string(contexts.size()) +
                                     " contexts for its " + std::to_string(impl.ranks.size()) + " ranks");
  }
  const cudaStream_t s = as_stream(stream);
  // Stream-ordered: a cudaMalloc/cudaFree here would synchronise the device, and with ranks that are threads
  // sharing the GPU a peer's next operation may already spin there, waiting for this rank.
  DeviceArray<p::LowLatencyContext> on_device(contexts.size(), s, true);
  check(cudaMemcpyAsync(on_device.data(), contexts.data(), sizeof(p::LowLatencyContext) * contexts.size(),
                        cudaMemcpyHostToDevice, s),
        "copy the clean's contexts");
  check(cudaMemsetAsync(impl.aborts.data(), 0, sizeof(std::uint32_t) * kAbortWords * contexts.size(), s),
        "clear the abort words");
  std::uint64_t timeout = 0;
  for (const p::LowLatencyContext& ctx : contexts) timeout = std::max(timeout, impl.timeout_ns(ctx));
  launch_clean(on_device.data(), impl.statics.data(), static_cast<int>(contexts.size()), epoch, timeout, s);
  finish(stream);
}

void LowLatencyDeviceEngine::finish(void* stream) {
  check(cudaStreamSynchronize(as_stream(stream)), "the low-latency kernels");
  raise_failures();
}

void LowLatencyDeviceEngine::raise_failures() {
  Impl& impl = *impl_;
  // Every rank's record is taken and cleared (one fault usually leaves records on several ranks, which the
  // next operation must not report); the first is raised.
  std::optional<DeviceReport> first;
  for (std::size_t i = 0; i < impl.ranks.size(); ++i) {
    DeviceReport& report = impl.reports.host()[i];
    if (report.failure == 0) continue;
    if (!first) first = report;
    report = DeviceReport{};
  }
  if (first) throw_low_latency_report(*first, std::chrono::nanoseconds(impl.last_timeout_ns));
}

// ---- the virtual cluster ----

struct LowLatencyVirtualCluster::Impl {
  int num_ranks = 0;
  std::vector<DeviceArray<std::byte>> regions;
  std::unique_ptr<transport::Proxy> proxy;  // owns the fabrics; stopped before the regions go
  std::unique_ptr<LowLatencyDeviceEngine> engine;

  ~Impl() {
    engine.reset();
    if (proxy) proxy->stop();
    proxy.reset();
  }
};

LowLatencyVirtualCluster::LowLatencyVirtualCluster(int num_nodes, int local_size, std::size_t bytes,
                                                   const LowLatencyDeviceOptions& options)
    : impl_(std::make_unique<Impl>()) {
  Impl& impl = *impl_;
  const std::string unavailable = gpu_unavailable_reason();
  if (!unavailable.empty())
    fail(Errc::unsupported, "a low-latency virtual cluster needs a GPU: " + unavailable);
  check(cudaSetDevice(options.device), "cudaSetDevice");
  p::Topology topo;
  topo.num_nodes = num_nodes;
  topo.local_size = local_size;
  const int R = topo.num_ranks();
  impl.num_ranks = R;
  for (int r = 0; r < R; ++r) {
    impl.regions.emplace_back(bytes);
    check(cudaMemset(impl.regions.back().data(), 0, bytes), "cudaMemset(low-latency region)");
  }
  std::vector<LowLatencyDeviceRank> ranks(R);
  for (int r = 0; r < R; ++r) {
    ranks[r].rank = r;
    ranks[r].region = impl.regions[r].data();
    for (int l = 0; l < local_size; ++l)
      ranks[r].node_peers.push_back(impl.regions[topo.rank_of(topo.node_of(r), l)].data());
  }
  if (num_nodes > 1) {
    // One fabric per rank, driven by its own proxy thread; ring k of rank r is the proxy's ring k * R + r,
    // which thread r drains with rank r's fabric.
    transport::DeviceCopyWorld world(R, options.device, options.timeout);
    std::vector<std::unique_ptr<transport::Fabric>> fabrics;
    for (int r = 0; r < R; ++r) {
      fabrics.push_back(world.make_fabric(r));
      fabrics.back()->register_region(impl.regions[r].data(), bytes, transport::MemoryKind::cuda);
    }
    for (auto& fabric : fabrics) fabric->connect();
    transport::ProxyOptions proxy_options;
    proxy_options.rings = kLowLatencyRings * R;
    proxy_options.memory = transport::RingMemory::cuda_mapped;
    proxy_options.timeout = options.timeout;
    impl.proxy = std::make_unique<transport::Proxy>(std::move(fabrics), proxy_options);
    for (int r = 0; r < R; ++r) {
      for (int k = 0; k < kLowLatencyRings; ++k)
        ranks[r].rings.push_back(impl.proxy->ring(k * R + r).device_view());
    }
  }
  impl.engine = std::make_unique<LowLatencyDeviceEngine>(topo, std::move(ranks), options);
}

LowLatencyVirtualCluster::~LowLatencyVirtualCluster() = default;

int LowLatencyVirtualCluster::num_ranks() const {
  return impl_->num_ranks;
}
std::byte* LowLatencyVirtualCluster::region(int rank) const {
  return impl_->regions.at(rank).data();
}
LowLatencyDeviceEngine& LowLatencyVirtualCluster::engine() {
  return *impl_->engine;
}

}  // namespace ferry::kernels::cuda
