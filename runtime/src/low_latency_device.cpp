#include "low_latency_device.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstring>
#include <mutex>
#include <new>
#include <string>
#include <thread>

#include "cuda_support.hpp"
#include "device_block_cache.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/cuda/device_engine.hpp"
#include "ferry/kernels/cuda/low_latency_engine.hpp"
#include "ferry/runtime/group_peers.hpp"
#include "ferry/transport/cuda_check.hpp"
#include "ferry/transport/peer_memory.hpp"
#include "ferry/transport/proxy.hpp"
#include "operation_queue.hpp"
#include "tensor_access.hpp"

namespace ferry {

namespace {

namespace p = kernels::protocol;
namespace kc = kernels::cuda;
using detail::cuda_check;
using transport::detail::DeviceEvent;
using transport::detail::DeviceScope;
using transport::detail::RelaxedCaptureMode;

// Device tensors the buffer returns: kept for reuse up to this many bytes (device_block_cache.hpp).
constexpr std::size_t kCachedLowLatencyBytes = std::size_t{2} << 30;

// cudaStreamGetCaptureInfo without throwing: the status (None for a stream the query refuses, such as the
// legacy stream while another thread captures) and the capture's id.
std::pair<cudaStreamCaptureStatus, unsigned long long> capture_info(cudaStream_t stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  unsigned long long id = 0;
  if (cudaStreamGetCaptureInfo(stream, &status, &id) != cudaSuccess) {
    transport::detail::forget_last_error();
    return {cudaStreamCaptureStatusNone, 0};
  }
  return {status, status == cudaStreamCaptureStatusActive ? id : 0};  // the id is defined only then
}

// The pool captured calls' memory comes from: the buffer's own, so that an allocation never waits on another
// stream's free (the default pool may make cudaMallocAsync depend on one, and a rank thread sharing the GPU
// frees behind kernels that spin until this rank sends). Destroyed once its last block is freed.
std::shared_ptr<CUmemPoolHandle_st> make_graph_pool(int gpu) {
  cudaMemPoolProps props{};
  props.allocType = cudaMemAllocationTypePinned;
  props.location.type = cudaMemLocationTypeDevice;
  props.location.id = gpu;
  cudaMemPool_t pool = nullptr;
  cuda_check(cudaMemPoolCreate(&pool, &props), "cudaMemPoolCreate (captured calls' memory)");
  std::shared_ptr<CUmemPoolHandle_st> owner(pool, [](cudaMemPool_t p) {
    const RelaxedCaptureMode relaxed;  // the last block may go while some thread captures
    cudaMemPoolDestroy(p);             // deferred by CUDA until its last free has run
  });
  int off = 0;
  for (const cudaMemPoolAttr attr :
       {cudaMemPoolReuseFollowEventDependencies, cudaMemPoolReuseAllowOpportunistic,
        cudaMemPoolReuseAllowInternalDependencies}) {
    cuda_check(cudaMemPoolSetAttribute(pool, attr, &off), "cudaMemPoolSetAttribute");
  }
  return owner;
}

// Device memory of its own for a captured call, from the buffer's graph pool on its side stream (which never
// joins a capture), complete before this returns, so the graph may use it from any stream. cudaMallocAsync
// on another stream and the synchronisation are "potentially unsafe" during a global-mode capture: this
// thread's mode is relaxed around them (the block is not part of the graph). The last reference frees it in
// the side stream's order: no device-wide synchronisation.
std::shared_ptr<std::byte> graph_block(int gpu, const std::shared_ptr<CUmemPoolHandle_st>& pool,
                                       const std::shared_ptr<CUstream_st>& side, std::size_t bytes) {
  void* block = nullptr;
  cudaError_t status = cudaSuccess;
  {
    const RelaxedCaptureMode relaxed;
    status = cudaMallocFromPoolAsync(&block, bytes, pool.get(), side.get());
    if (status == cudaSuccess) status = cudaStreamSynchronize(side.get());
  }
  if (status != cudaSuccess) {
    transport::detail::forget_last_error();
    cuda_check(
        status,
        ("cudaMallocFromPoolAsync of " + std::to_string(bytes) + " bytes for a captured call").c_str());
  }
  return std::shared_ptr<std::byte>(static_cast<std::byte*>(block), [gpu, pool, side](std::byte* memory) {
    DeviceScope scope(gpu, std::nothrow);
    const RelaxedCaptureMode relaxed;
    cudaFreeAsync(memory, side.get());
  });
}

}  // namespace

namespace detail {

// The first failure the kernels recorded, kept until a clean. Shared with the Events, which may outlive the
// buffer: the engine pointer goes null when it does, after one last read.
struct LowLatencyFailures {
  std::mutex mutex;
  kc::LowLatencyDeviceEngine* engine = nullptr;
  std::exception_ptr first;

  // Reads the records (only once the work that writes them has run: the caller knows) and raises the first.
  void raise(bool read_records) {
    std::lock_guard lock(mutex);
    if (!first && engine != nullptr && read_records) {
      try {
        engine->raise_failures();
      } catch (...) {
        first = std::current_exception();
      }
    }
    if (!first) return;
    try {
      std::rethrow_exception(first);
    } catch (const Error& error) {
      throw Error::detached_copy(error);  // the kept one is shared with other waiters
    }
  }

  // Before a clean (the stream drained): the records of earlier work are that work's, and the clean starts
  // afresh. Holds the lock, so that no wait reads records while the clean's kernel runs.
  std::unique_lock<std::mutex> forget() {
    std::unique_lock lock(mutex);
    try {
      if (engine != nullptr) engine->raise_failures();  // clears them
    } catch (const Error&) {
    }
    first = nullptr;
    return lock;
  }
};

// An Event of the buffer: a CUDA event on its stream, then the records.
class LowLatencyCompletion final : public DeviceCompletion {
 public:
  LowLatencyCompletion(int gpu, std::shared_ptr<CUstream_st> stream,
                       std::shared_ptr<LowLatencyFailures> failures, Duration bound)
      : gpu_(gpu), stream_(std::move(stream)), event_(gpu), failures_(std::move(failures)), bound_(bound) {
    event_.record(stream_.get());
  }

  // Recorded outside any capture (event() records none during one): querying it is safe while a capture is
  // open, which the binding's bookkeeping and claim() do (DeviceEvent::passed relaxes the capture mode).
  bool test() override { return event_.passed(); }

  // Every phase kernel gives up by itself after its timeout, so the event passes; the bound is the last
  // resort against a kernel that cannot (a GPU that stopped).
  void wait() override {
    DeviceScope scope(gpu_);
    if (capture_info(stream_.get()).first != cudaStreamCaptureStatusNone) {
      fail(Errc::invalid_argument,
           "waiting for a low-latency operation while the buffer's stream takes part in a CUDA graph capture "
           "(a wait would invalidate it): wait before or after the capture");
    }
    const RelaxedCaptureMode relaxed;  // the stream is not in one; another thread's may be open
    const auto deadline = std::chrono::steady_clock::now() + bound_;
    // Every kernel on the stream ends by itself (each phase is bounded), and a hook's receive half is only
    // enqueued when the hook runs: so the stream drains, and its records are then whole. Waiting for it
    // (rather than for this event alone) makes the wait raise what the kernels recorded, this operation's or
    // a later one's, deterministically.
    while (cudaStreamQuery(stream_.get()) == cudaErrorNotReady) {
      if (std::chrono::steady_clock::now() > deadline) {
        fail(Errc::timeout,
             "the low-latency kernels on GPU " + std::to_string(gpu_) + " ran past " +
                 std::to_string(std::chrono::duration_cast<std::chrono::seconds>(bound_).count()) +
                 " s, beyond every phase's own deadline");
      }
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
    const cudaError_t status = cudaEventQuery(event_.get());
    if (status != cudaSuccess) cuda_check(status, "the low-latency kernels");
    failures_->raise(true);
  }

  void stream_wait(void* stream) override {
    DeviceScope scope(gpu_);
    cuda_check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), event_.get(), 0),
               "cudaStreamWaitEvent");
  }

 private:
  int gpu_;
  std::shared_ptr<CUstream_st> stream_;  // the buffer's: kept alive with the Event
  DeviceEvent event_;
  std::shared_ptr<LowLatencyFailures> failures_;
  Duration bound_;
};

struct LowLatencyFreeDevice {
  void operator()(void* memory) const noexcept { cudaFree(memory); }
};
struct LowLatencyFreeHost {
  void operator()(void* memory) const noexcept { cudaFreeHost(memory); }
};

}  // namespace detail

using detail::LowLatencyCompletion;
using detail::LowLatencyFailures;
using detail::LowLatencyFreeDevice;
using detail::LowLatencyFreeHost;

struct LowLatencyDevice::Impl {
  Group& group;
  LowLatencyConfig config;
  int gpu = 0;
  int num_ranks = 0;
  std::shared_ptr<CUstream_st> stream_owner;
  cudaStream_t stream = nullptr;
  std::shared_ptr<detail::DeviceBlockCache> outputs;
  std::unique_ptr<transport::PeerMemory> memory;
  std::unique_ptr<transport::Proxy> proxy;
  std::unique_ptr<kc::LowLatencyDeviceEngine> engine;
  std::unique_ptr<std::uint64_t, LowLatencyFreeDevice> mask;  // [R] device memory
  // The store's news as the GPU reads it: host memory mapped for the GPU, refreshed from the watch's words
  // when an operation is issued (kernels already running learn of a death by their timeout).
  const std::uint64_t* gone_source = nullptr;
  std::unique_ptr<std::uint64_t, LowLatencyFreeHost> gone_mapped;
  std::uint64_t* gone_device = nullptr;
  std::shared_ptr<LowLatencyFailures> failures = std::make_shared<LowLatencyFailures>();
  int threads_on_gpu = 1;  // ranks of this process on this GPU, this one included
  // The memory of calls captured into CUDA graphs: a call's blocks are kept until its graph lets go (results
  // the caller still holds, until they go too); blocks whose graph could not be told stay with the buffer.
  struct GraphHold {
    std::shared_ptr<const std::atomic<bool>> released;  // null: until the buffer goes
    std::vector<std::shared_ptr<std::byte>> blocks;
  };
  std::shared_ptr<CUstream_st> side_owner;            // allocates and frees them; never captured
  std::shared_ptr<CUmemPoolHandle_st> graph_pool;     // made at the first captured call
  std::vector<std::shared_ptr<std::byte>> capturing;  // the current captured call's blocks
  std::vector<GraphHold> graph_holds;

  // Drops the blocks of graphs that are gone.
  void collect_graph_holds() {
    std::erase_if(graph_holds, [](const GraphHold& hold) {
      return hold.released && hold.released->load(std::memory_order_acquire);
    });
  }

  Impl(Group& g, const LowLatencyConfig& c) : group(g), config(c) {}

  void refresh_gone() {
    if (!gone_mapped) return;
    for (int r = 0; r < num_ranks; ++r) {
      const std::uint64_t lost =
          std::atomic_ref<const std::uint64_t>(gone_source[r]).load(std::memory_order_acquire);
      std::atomic_ref<std::uint64_t>(gone_mapped.get()[r]).store(lost, std::memory_order_release);
    }
  }

  // The engine takes one plan per rank it runs: this rank alone.
  template <class Plan>
  static std::vector<Plan> one(const Plan& plan) {
    return {plan};
  }
};

LowLatencyDevice::LowLatencyDevice(Group& group, const LowLatencyConfig& config, const std::uint64_t* gone)
    : impl_(std::make_unique<Impl>(group, config)) {
  Impl& impl = *impl_;
  const std::string unavailable = kc::gpu_unavailable_reason();
  if (!unavailable.empty())
    fail(Errc::unsupported, "a LowLatencyBuffer on the GPU needs one: " + unavailable);
  int gpus = 0;
  cuda_check(cudaGetDeviceCount(&gpus), "cudaGetDeviceCount");
  impl.gpu = group.local_rank() % gpus;
  impl.num_ranks = group.world_size();
  DeviceScope scope(impl.gpu);
  impl.stream_owner = detail::make_buffer_stream(impl.gpu);
  impl.stream = impl.stream_owner.get();
  impl.outputs = detail::make_device_block_cache(impl.gpu, kCachedLowLatencyBytes, impl.stream_owner);
  impl.side_owner = detail::make_buffer_stream(impl.gpu);
  // Ranks that are threads of one process on one GPU need a hardware queue each (their kernels wait for
  // each other), and a stream each: the legacy default stream is one per process.
  const detail::GpuSharing sharing = detail::gpu_sharing(group, impl.gpu, "ferry/low_latency/gpu-uuid");
  if (!sharing.problem.empty())
    fail(Errc::invalid_argument, "a LowLatencyBuffer on the GPU: " + sharing.problem);
  impl.threads_on_gpu = sharing.threads;

  const std::size_t bytes = config.num_rdma_bytes;
  const transport::Peers peers = runtime::group_peers(group, config.timeout);
  impl.memory = transport::make_cuda_ipc_peer_memory(peers, bytes, impl.gpu, "ferry-lowlat");  // zeroed
  kc::LowLatencyDeviceRank rank;
  rank.rank = group.rank();
  rank.region = static_cast<std::byte*>(impl.memory->local());
  for (int l = 0; l < group.local_size(); ++l)
    rank.node_peers.push_back(static_cast<std::byte*>(impl.memory->peer(l)));
  if (group.num_nodes() > 1) {
    impl.proxy = detail::make_device_proxy(peers, impl.memory->local(), bytes, kc::kLowLatencyRings, impl.gpu,
                                           config.timeout);
    for (int k = 0; k < kc::kLowLatencyRings; ++k) rank.rings.push_back(impl.proxy->ring(k).device_view());
  }

  void* mask = nullptr;
  cuda_check(cudaMalloc(&mask, sizeof(std::uint64_t) * impl.num_ranks), "cudaMalloc(mask)");
  impl.mask.reset(static_cast<std::uint64_t*>(mask));
  cuda_check(cudaMemset(mask, 0, sizeof(std::uint64_t) * impl.num_ranks), "cudaMemset(mask)");
  if (gone != nullptr) {
    void* mapped = nullptr;
    cuda_check(cudaHostAlloc(&mapped, sizeof(std::uint64_t) * impl.num_ranks, cudaHostAllocMapped),
               "cudaHostAlloc(dead ranks)");
    impl.gone_mapped.reset(static_cast<std::uint64_t*>(mapped));
    std::memset(mapped, 0, sizeof(std::uint64_t) * impl.num_ranks);
    void* on_device = nullptr;
    cuda_check(cudaHostGetDevicePointer(&on_device, mapped, 0), "cudaHostGetDevicePointer(dead ranks)");
    impl.gone_device = static_cast<std::uint64_t*>(on_device);
    impl.gone_source = gone;
  }

  std::vector<kc::LowLatencyDeviceRank> ranks;
  ranks.push_back(std::move(rank));
  p::Topology topo;
  topo.num_nodes = group.num_nodes();
  topo.local_size = group.local_size();
  kc::LowLatencyDeviceOptions options;
  options.device = impl.gpu;
  options.timeout = config.timeout;
  impl.engine =
      std::make_unique<kc::LowLatencyDeviceEngine>(topo, std::move(ranks), options);  // synchronises
  impl.failures->engine = impl.engine.get();
  group.barrier("ferry/low_latency/device-ready");
}

// Nothing is released while something may still use it: the stream drained (the kernels end by themselves),
// the records read for the Events, the peers past their last write, then the engine, the cached blocks, the
// proxy and fabric, the peer memory.
LowLatencyDevice::~LowLatencyDevice() {
  Impl& impl = *impl_;
  DeviceScope scope(impl.gpu, std::nothrow);
  cudaStreamSynchronize(impl.stream);
  try {
    impl.failures->raise(true);
  } catch (...) {  // kept for the Events that ask
  }
  {
    std::lock_guard lock(impl.failures->mutex);
    impl.failures->engine = nullptr;
  }
  try {
    impl.group.barrier("ferry/low_latency/device-close");
  } catch (...) {  // a destructor cannot report; the operations that failed already have
  }
  impl.engine.reset();
  impl.capturing.clear();
  impl.graph_holds.clear();
  impl.outputs->close();
  if (impl.proxy) impl.proxy->stop();
  impl.proxy.reset();
  impl.memory.reset();
  impl.mask.reset();
  impl.gone_mapped.reset();
  impl.stream_owner.reset();
}

std::byte* LowLatencyDevice::region() const {
  return static_cast<std::byte*>(impl_->memory->local());
}
std::uint64_t* LowLatencyDevice::mask() const {
  return impl_->mask.get();
}
const std::uint64_t* LowLatencyDevice::gone() const {
  return impl_->gone_device;
}

Tensor LowLatencyDevice::tensor(std::initializer_list<std::int64_t> shape, DType dtype, bool for_graph) {
  const TensorView view(nullptr, shape, dtype);
  const std::size_t bytes = std::max<std::size_t>(view.bytes(), 1);
  DeviceScope scope(impl_->gpu);
  if (for_graph) {
    if (!impl_->graph_pool) impl_->graph_pool = make_graph_pool(impl_->gpu);
    impl_->capturing.push_back(graph_block(impl_->gpu, impl_->graph_pool, impl_->side_owner, bytes));
    return detail::TensorAccess::adopt(impl_->capturing.back(), shape, dtype, Device::cuda);
  }
  return detail::TensorAccess::adopt(impl_->outputs->allocate(bytes, impl_->stream), shape, dtype,
                                     Device::cuda);
}

// A call captured into a CUDA graph: the host numbers operations and keeps its books when the call is
// captured, the kernels number each launch from the rank's counter in device memory (a replay is the next
// operation on every rank, as every rank replays). The buffer's stream joins the caller's capture through
// follow() and leaves it through lead(); meanwhile no other stream's call may enqueue there (it would land in
// the graph), so one is refused by name.
LowLatencyDevice::Capture LowLatencyDevice::check_stream(void* caller) {
  DeviceScope scope(impl_->gpu);
  const auto stream = static_cast<cudaStream_t>(caller);
  if ((caller == nullptr || caller == cudaStreamLegacy) && impl_->threads_on_gpu > 1) {
    fail(Errc::invalid_argument,
         "stream is the legacy default stream, which the " + std::to_string(impl_->threads_on_gpu) +
             " ranks of this process on GPU " + std::to_string(impl_->gpu) +
             " share (each rank's calls would wait for the others'): pass a stream of each rank's own");
  }
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  unsigned long long id = 0;
  const cudaError_t error = cudaStreamGetCaptureInfo(stream, &status, &id);
  if (error == cudaErrorStreamCaptureImplicit) {
    transport::detail::forget_last_error();
    fail(Errc::invalid_argument,
         "stream is the legacy default stream while another stream of this process is being captured into a "
         "CUDA graph (it would join that capture): pass a stream of your own");
  }
  cuda_check(error, "cudaStreamGetCaptureInfo");
  if (status == cudaStreamCaptureStatusInvalidated) {
    fail(Errc::invalid_argument,
         "the stream's CUDA graph capture was invalidated by an earlier error: end it, and capture again");
  }
  const bool active = status == cudaStreamCaptureStatusActive;
  const Capture mine{active, active ? id : 0};  // the id is defined only for an active capture
  const auto [buffer_status, buffer_id] = capture_info(impl_->stream);
  if (buffer_status != cudaStreamCaptureStatusNone && (!mine.active || buffer_id != mine.id)) {
    fail(Errc::invalid_argument,
         std::string(
             "the buffer's stream takes part in a CUDA graph capture still open on another stream: end "
             "that capture before calling from ") +
             (mine.active ? "another capture" : "a stream outside it"));
  }
  return mine;
}

void LowLatencyDevice::refuse_in_capture(const char* what) {
  if (in_capture()) {
    fail(Errc::invalid_argument, std::string(what) +
                                     " synchronises the buffer's stream, which takes part in a CUDA graph "
                                     "capture still open: call it before or after the capture");
  }
}

void LowLatencyDevice::begin_call() {
  Impl& impl = *impl_;
  impl.collect_graph_holds();
  if (!impl.capturing.empty()) {  // an earlier captured call's, whose end could not hand them on: kept
    impl.graph_holds.reserve(impl.graph_holds.size() + 1);  // a throw here leaves them in `capturing`
    impl.graph_holds.push_back(Impl::GraphHold{nullptr, std::move(impl.capturing)});
    impl.capturing.clear();
  }
}

// Whatever happened to the call, its graph (if the capture is still valid) may address its blocks: they go
// with the graph. Without a graph to tell (or out of host memory to say so), they stay with the buffer.
void LowLatencyDevice::end_captured_call(void* caller) noexcept {
  Impl& impl = *impl_;
  if (impl.capturing.empty()) return;
  try {
    impl.graph_holds.reserve(impl.graph_holds.size() + 1);  // nothing below throws once the graph holds it
    Impl::GraphHold hold;
    DeviceScope scope(impl.gpu, std::nothrow);
    cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
    cudaGraph_t graph = nullptr;
    if (cudaStreamGetCaptureInfo(static_cast<cudaStream_t>(caller), &status, nullptr, &graph) !=
        cudaSuccess) {
      transport::detail::forget_last_error();
      graph = nullptr;
    }
    if (status == cudaStreamCaptureStatusActive && graph != nullptr)
      hold.released = transport::detail::flag_when_graph_lets_go(graph);
    hold.blocks = std::move(impl.capturing);  // only now: until here a throw leaves them in `capturing`
    impl.capturing.clear();
    impl.graph_holds.push_back(std::move(hold));  // reserved: does not throw
  } catch (...) {
    // Out of host memory: the blocks stay in `capturing`, and begin_call keeps them with the buffer.
  }
}

bool LowLatencyDevice::in_capture() {
  DeviceScope scope(impl_->gpu);
  return capture_info(impl_->stream).first != cudaStreamCaptureStatusNone;
}

void LowLatencyDevice::follow(void* caller) {
  DeviceScope scope(impl_->gpu);
  DeviceEvent before(impl_->gpu);
  before.record(static_cast<cudaStream_t>(caller));
  cuda_check(cudaStreamWaitEvent(impl_->stream, before.get(), 0), "cudaStreamWaitEvent");
  impl_->refresh_gone();
}

void LowLatencyDevice::lead(void* caller) {
  DeviceScope scope(impl_->gpu);
  DeviceEvent after(impl_->gpu);
  after.record(impl_->stream);
  cuda_check(cudaStreamWaitEvent(static_cast<cudaStream_t>(caller), after.get(), 0), "cudaStreamWaitEvent");
}

void LowLatencyDevice::copy(void* to, const void* from, std::size_t bytes) {
  if (bytes == 0) return;
  DeviceScope scope(impl_->gpu);
  cuda_check(cudaMemcpyAsync(to, from, bytes, cudaMemcpyDeviceToDevice, impl_->stream), "cudaMemcpyAsync");
}

void LowLatencyDevice::fill(void* to, int byte, std::size_t bytes) {
  if (bytes == 0) return;
  DeviceScope scope(impl_->gpu);
  cuda_check(cudaMemsetAsync(to, byte, bytes, impl_->stream), "cudaMemsetAsync");
}

void LowLatencyDevice::dispatch_send(const p::LowLatencyDispatchPlan& plan) {
  DeviceScope scope(impl_->gpu);
  impl_->engine->dispatch_send(impl_->one(plan), impl_->stream);
}
void LowLatencyDevice::dispatch_receive(const p::LowLatencyDispatchPlan& plan) {
  DeviceScope scope(impl_->gpu);
  impl_->engine->dispatch_receive(impl_->one(plan), impl_->stream);
}
void LowLatencyDevice::combine_send(const p::LowLatencyCombinePlan& plan) {
  DeviceScope scope(impl_->gpu);
  impl_->engine->combine_send(impl_->one(plan), impl_->stream);
}
void LowLatencyDevice::combine_receive(const p::LowLatencyCombinePlan& plan) {
  DeviceScope scope(impl_->gpu);
  impl_->engine->combine_receive(impl_->one(plan), impl_->stream);
}

void LowLatencyDevice::acquire_staging(const p::LowLatencyContext& ctx) {
  DeviceScope scope(impl_->gpu);
  impl_->engine->acquire_staging({ctx}, impl_->stream);
}
void LowLatencyDevice::add_dispatch_stats(const p::LowLatencyDispatchPlan& plan,
                                          std::int32_t* recv_per_local_expert,
                                          std::int64_t* wait_per_source) {
  DeviceScope scope(impl_->gpu);
  impl_->engine->add_dispatch_stats(plan, recv_per_local_expert, wait_per_source, impl_->stream);
}
void LowLatencyDevice::add_combine_stats(const p::LowLatencyCombinePlan& plan,
                                         std::int64_t* wait_per_source) {
  DeviceScope scope(impl_->gpu);
  impl_->engine->add_combine_stats(plan, wait_per_source, impl_->stream);
}

void LowLatencyDevice::clean(const p::LowLatencyContext& ctx, std::uint64_t epoch) {
  refuse_in_capture("clean_low_latency_buffer");
  const RelaxedCaptureMode relaxed;  // the buffer's stream is in no capture; another thread's may be open
  Impl& impl = *impl_;
  DeviceScope scope(impl.gpu);
  cuda_check(cudaStreamSynchronize(impl.stream), "the low-latency kernels");
  const std::unique_lock lock = impl.failures->forget();
  impl.refresh_gone();
  impl.engine->clean({ctx}, epoch, impl.stream);
}

Event LowLatencyDevice::event(bool capturing) {
  Impl& impl = *impl_;
  if (capturing) return Event();
  DeviceScope scope(impl.gpu);
  // Past every phase of the operations before it on the stream, each bounded by its own deadline.
  const Duration bound = std::chrono::nanoseconds(p::low_latency_stuck_after_ns(
                             static_cast<std::uint64_t>(impl.config.timeout.count()))) *
                             16 +
                         std::chrono::seconds(30);
  auto state = std::make_shared<Event::State>();
  state->device = std::make_shared<LowLatencyCompletion>(impl.gpu, impl.stream_owner, impl.failures, bound);
  return Event(state);
}

void LowLatencyDevice::raise_failures(bool capturing) {
  if (capturing) {
    impl_->failures->raise(false);  // querying a stream in a capture would invalidate it
    return;
  }
  DeviceScope scope(impl_->gpu);
  const RelaxedCaptureMode relaxed;  // the buffer's stream is in no capture; another thread's may be open
  const cudaError_t status = cudaStreamQuery(impl_->stream);
  if (status != cudaSuccess && status != cudaErrorNotReady) cuda_check(status, "the low-latency kernels");
  impl_->failures->raise(status == cudaSuccess);
}

// Through the buffer's stream and synchronised: a pageable cudaMemcpy may return before its copy lands, and
// the legacy stream it uses does not order the buffer's non-blocking stream.
void LowLatencyDevice::set_mask(int rank, bool masked) {
  refuse_in_capture("low_latency_update_mask_buffer");
  const RelaxedCaptureMode relaxed;  // the buffer's stream is in no capture; another thread's may be open
  Impl& impl = *impl_;
  DeviceScope scope(impl.gpu);
  std::uint64_t* word = impl.mask.get() + rank;
  std::uint64_t value = 0;
  cuda_check(cudaMemcpyAsync(&value, word, sizeof value, cudaMemcpyDeviceToHost, impl.stream),
             "read the mask");
  cuda_check(cudaStreamSynchronize(impl.stream), "the low-latency kernels");
  if (masked && value != 0) return;  // a rank a wait gave up on stays so (p::kMaskedByWait)
  value = masked ? p::kMaskedByCaller : 0;
  cuda_check(cudaMemcpyAsync(word, &value, sizeof value, cudaMemcpyHostToDevice, impl.stream),
             "write the mask");
  cuda_check(cudaStreamSynchronize(impl.stream), "write the mask");
}

std::vector<std::uint64_t> LowLatencyDevice::read_mask() {
  refuse_in_capture("low_latency_query_mask_buffer");
  const RelaxedCaptureMode relaxed;  // the buffer's stream is in no capture; another thread's may be open
  Impl& impl = *impl_;
  DeviceScope scope(impl.gpu);
  std::vector<std::uint64_t> words(impl.num_ranks);
  cuda_check(cudaMemcpyAsync(words.data(), impl.mask.get(), sizeof(std::uint64_t) * words.size(),
                             cudaMemcpyDeviceToHost, impl.stream),
             "read the mask");
  cuda_check(cudaStreamSynchronize(impl.stream), "the low-latency kernels");
  return words;
}

void LowLatencyDevice::clear_mask() {
  refuse_in_capture("low_latency_clean_mask_buffer");
  Impl& impl = *impl_;
  DeviceScope scope(impl.gpu);
  cuda_check(cudaMemsetAsync(impl.mask.get(), 0, sizeof(std::uint64_t) * impl.num_ranks, impl.stream),
             "clear the mask");
}

}  // namespace ferry
