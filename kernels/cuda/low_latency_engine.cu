// The host side of the low-latency mode's CUDA executor (ferry/kernels/cuda/low_latency_engine.hpp): what
// each rank's kernels share, the phases of each half in stream order, failure records, and the virtual
// cluster.
#include <algorithm>
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
      fail(Errc::protocol, where + " received " + host::describe_fault(report.fault) + " (from rank " +
                               std::to_string(report.fault.peer_rank) + ")");
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
  MappedArray<DeviceReport> reports;                // per rank

  const LowLatencyRankStatic* rank_static(std::size_t i) const { return statics.data() + i; }
  std::uint64_t timeout_ns() const {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(options.timeout).count());
  }
  // The bulk phases: blocks_per_rank blocks of groups; the posting phases: one block of up to
  // kLowLatencyRings.
  LowLatencyLaunch bulk() const {
    return {options.blocks_per_rank, options.groups_per_block, options.warps_per_group, timeout_ns()};
  }
  LowLatencyLaunch posting() const {
    return {1, std::min(options.groups_per_block, kLowLatencyRings), options.warps_per_group, timeout_ns()};
  }

  template <class Plan>
  void check_count(const std::vector<Plan>& plans) const {
    if (plans.size() != ranks.size()) {
      fail(Errc::invalid_argument, "low-latency device engine: " + std::to_string(plans.size()) +
                                       " plans for its " + std::to_string(ranks.size()) + " ranks");
    }
  }

  // The start of a send half: a new operation, so no rank is aborted any more.
  template <class Plan>
  cudaStream_t begin_send(const std::vector<Plan>& plans, void* stream) {
    check_count(plans);
    const cudaStream_t s = as_stream(stream);
    check(cudaMemsetAsync(aborts.data(), 0, sizeof(std::uint32_t) * kAbortWords * plans.size(), s),
          "clear the abort words");
    return s;
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
  const std::size_t count = impl.ranks.size();
  impl.statics = DeviceArray<LowLatencyRankStatic>(count);
  // Each rank's abort word is followed by its heartbeat (device_io.cuh): DeviceIo::progressed writes two
  // words past the abort word, so one word per rank would land in the next rank's abort word.
  impl.aborts = DeviceArray<std::uint32_t>(count * kAbortWords);
  impl.aborts.zero(nullptr);
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
  }
  check(cudaMemcpy(impl.statics.data(), statics.data(), sizeof(LowLatencyRankStatic) * count,
                   cudaMemcpyHostToDevice),
        "copy the ranks' launch records");
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
    launch_context_phase(LowLatencyPhase::acquire, plans[i].ctx, impl.rank_static(i), impl.posting(), s);
    launch_dispatch_phase(LowLatencyPhase::dispatch_scatter, plans[i], impl.rank_static(i), impl.bulk(), s);
    launch_dispatch_phase(LowLatencyPhase::dispatch_publish, plans[i], impl.rank_static(i), impl.posting(),
                          s);
  }
}

void LowLatencyDeviceEngine::dispatch_receive(const std::vector<p::LowLatencyDispatchPlan>& plans,
                                              void* stream) {
  Impl& impl = *impl_;
  impl.check_count(plans);
  const cudaStream_t s = as_stream(stream);
  for (std::size_t i = 0; i < plans.size(); ++i)
    launch_dispatch_phase(LowLatencyPhase::dispatch_gather, plans[i], impl.rank_static(i), impl.bulk(), s);
  for (std::size_t i = 0; i < plans.size(); ++i)
    launch_context_phase(LowLatencyPhase::release, plans[i].ctx, impl.rank_static(i), impl.posting(), s);
}

void LowLatencyDeviceEngine::combine_send(const std::vector<p::LowLatencyCombinePlan>& plans, void* stream) {
  Impl& impl = *impl_;
  const cudaStream_t s = impl.begin_send(plans, stream);
  for (std::size_t i = 0; i < plans.size(); ++i) {
    launch_context_phase(LowLatencyPhase::acquire, plans[i].ctx, impl.rank_static(i), impl.posting(), s);
    launch_combine_phase(LowLatencyPhase::combine_return, plans[i], impl.rank_static(i), impl.posting(), s);
  }
}

void LowLatencyDeviceEngine::combine_receive(const std::vector<p::LowLatencyCombinePlan>& plans,
                                             void* stream) {
  Impl& impl = *impl_;
  impl.check_count(plans);
  const cudaStream_t s = as_stream(stream);
  for (std::size_t i = 0; i < plans.size(); ++i) {
    launch_combine_phase(LowLatencyPhase::combine_wait, plans[i], impl.rank_static(i), impl.bulk(), s);
    launch_combine_phase(LowLatencyPhase::combine_reduce, plans[i], impl.rank_static(i), impl.bulk(), s);
  }
  for (std::size_t i = 0; i < plans.size(); ++i)
    launch_context_phase(LowLatencyPhase::release, plans[i].ctx, impl.rank_static(i), impl.posting(), s);
}

void LowLatencyDeviceEngine::clean(const std::vector<p::LowLatencyContext>& contexts, std::uint64_t epoch,
                                   void* stream) {
  Impl& impl = *impl_;
  impl.check_count(contexts);
  const cudaStream_t s = as_stream(stream);
  DeviceArray<p::LowLatencyContext> on_device(contexts.size());
  check(cudaMemcpyAsync(on_device.data(), contexts.data(), sizeof(p::LowLatencyContext) * contexts.size(),
                        cudaMemcpyHostToDevice, s),
        "copy the clean's contexts");
  launch_clean(on_device.data(), impl.statics.data(), static_cast<int>(contexts.size()), epoch,
               impl.timeout_ns(), s);
  finish(stream);
}

void LowLatencyDeviceEngine::finish(void* stream) {
  Impl& impl = *impl_;
  check(cudaStreamSynchronize(as_stream(stream)), "the low-latency kernels");
  for (std::size_t i = 0; i < impl.ranks.size(); ++i) {
    DeviceReport& report = impl.reports.host()[i];
    if (report.failure == 0) continue;
    const DeviceReport copy = report;
    report = DeviceReport{};  // the next operation starts clean
    throw_low_latency_report(copy, impl.options.timeout);
  }
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
