#include "device_backend.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <new>
#include <optional>
#include <string>
#include <vector>

#include "cuda_support.hpp"
#include "device_block_cache.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/cuda/device_engine.hpp"
#include "ferry/kernels/cuda/device_layout.hpp"
#include "ferry/runtime/group_peers.hpp"
#include "ferry/transport/cuda_check.hpp"
#include "ferry/transport/peer_memory.hpp"
#include "ferry/transport/proxy.hpp"
#include "operation_queue.hpp"
#include "tensor_access.hpp"
#include "traffic_counters.hpp"

namespace ferry {

namespace {

namespace p = kernels::protocol;
namespace kc = kernels::cuda;

p::PayloadKind kind_of(DType dtype, const char* name) {
  switch (dtype) {
    case DType::bf16:
      return p::PayloadKind::bf16;
    case DType::fp32:
      return p::PayloadKind::fp32;
    case DType::fp8_e4m3:
      return p::PayloadKind::fp8_e4m3;
    default:
      fail(Errc::invalid_argument,
           std::string(name) + " must be bf16, fp32 or fp8_e4m3, not " + to_string(dtype));
  }
}

void require_device(const TensorView& view, const char* name) {
  if (view.empty()) return;
  if (view.device() != Device::cuda) {
    fail(Errc::invalid_argument, std::string(name) + " is " + view.describe() +
                                     " but this Buffer runs on the GPU: pass device tensors");
  }
}

using detail::cuda_check;
using transport::detail::DeviceEvent;
using transport::detail::DeviceScope;

// A CUDA Buffer's operations cannot go into a CUDA graph: their Events, results and failures are settled on
// the host, and a dispatch sized by its counts waits for them there. Refused by name before anything is
// enqueued (the Buffer stays usable), rather than left to break the capture or to fail in wait().
void refuse_capture(void* caller, const char* operation) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  const cudaError_t error = cudaStreamIsCapturing(static_cast<cudaStream_t>(caller), &status);
  if (error == cudaErrorStreamCaptureImplicit) {
    transport::detail::forget_last_error();
    fail(Errc::unsupported,
         std::string("Buffer::") + operation +
             ": on the legacy default stream while a blocking stream is being captured into a "
             "CUDA graph (the legacy stream would join that capture and break it): pass a "
             "stream of your own, or issue it outside the capture");
  }
  cuda_check(error, "cudaStreamIsCapturing");
  if (status != cudaStreamCaptureStatusNone) {
    fail(Errc::unsupported,
         std::string("Buffer::") + operation +
             ": the caller's stream is being captured into a CUDA graph, and a CUDA Buffer's "
             "operations cannot be captured (their Events and results are settled on the "
             "host): issue them outside the capture");
  }
}

// Device tensors the Buffer returns: kept for reuse up to this many bytes (device_block_cache.hpp).
constexpr std::size_t kCachedOutputBytes = std::size_t{2} << 30;

// What an operation's error says once it has stopped the Buffer.
const char* const kRebuild =
    " (this Buffer stops here: its rings are in an unknown state on every rank; destroy it and build a new "
    "Buffer, on every rank, to go on)";

}  // namespace

class DeviceOpCompletion;

struct DeviceBackend::Impl {
  Group& group;
  Config config;
  int gpu = 0;
  std::shared_ptr<CUstream_st> stream_owner;
  cudaStream_t stream = nullptr;
  std::shared_ptr<detail::DeviceBlockCache> outputs;  // device tensors the Buffer returns
  std::unique_ptr<transport::PeerMemory> memory;
  std::unique_ptr<transport::Proxy> proxy;
  std::unique_ptr<kc::DeviceEngine> engine;
  std::unique_ptr<kc::DeviceLayout> layouts;

  // Operations not yet settled (failure records read, results finished): settled before the engine goes, so
  // an Event that outlives the Buffer needs nothing of it.
  std::mutex pending_mutex;
  std::vector<std::weak_ptr<DeviceOpCompletion>> pending;
  // The first failure, which stopped the Buffer: every later operation fails at once, quoting it.
  std::mutex failure_mutex;
  std::string first_failure;

  explicit Impl(Group& g) : group(g) {}

  // A device tensor from the Buffer's cache, for work on its stream.
  Tensor device_tensor(std::initializer_list<std::int64_t> shape, DType dtype) {
    const TensorView view(nullptr, shape, dtype);
    return detail::TensorAccess::adopt(outputs->allocate(view.bytes(), stream), shape, dtype, Device::cuda);
  }

  // The caller's stream's work so far comes first.
  void follow(void* caller) {
    DeviceEvent before(gpu);
    before.record(static_cast<cudaStream_t>(caller));
    cuda_check(cudaStreamWaitEvent(stream, before.get(), 0), "cudaStreamWaitEvent");
  }

  void stop(const Error& error) {
    std::lock_guard lock(failure_mutex);
    if (first_failure.empty()) first_failure = error.message();
  }

  // The Event of an operation refused because the Buffer has stopped; nullopt while it runs.
  std::optional<Event> refused() {
    std::lock_guard lock(failure_mutex);
    if (first_failure.empty()) return std::nullopt;
    auto state = std::make_shared<Event::State>();
    state->finish(std::make_exception_ptr(
        Error(Errc::peer_failure, "rank " + std::to_string(group.rank()) +
                                      ": operation not run because an earlier one failed: " + first_failure +
                                      kRebuild)));
    return Event(state);
  }

  // Runs `enqueue` (the engine's part of an operation). Bad arguments throw as they are; any other failure
  // (a notify that failed, a CUDA error) stops the Buffer and comes back as the operation's failed Event.
  std::optional<Event> issue(const std::function<void()>& enqueue) {
    try {
      enqueue();
      return std::nullopt;
    } catch (const Error& error) {
      if (error.code() == Errc::invalid_argument) throw;
      stop(error);
      auto state = std::make_shared<Event::State>();
      state->finish(std::make_exception_ptr(Error(error.code(), error.message() + kRebuild)));
      return Event(state);
    }
  }

  Event track(std::function<void()> after);
  void settle_all();
};

// Completion of one operation: its CUDA event, then the roles' failure records and what the operation does
// once it has run (`after`). Every CUDA call on the Buffer's GPU, whichever thread waits. Settled once, by
// the first wait() or by the Buffer's destructor; after that it needs nothing of the Buffer.
class DeviceOpCompletion final : public DeviceCompletion {
 public:
  DeviceOpCompletion(DeviceBackend::Impl& impl, std::uint32_t operation, std::function<void()> after)
      : impl_(&impl), gpu_(impl.gpu), operation_(operation), event_(impl.gpu), after_(std::move(after)) {
    event_.record(impl.stream);
  }

  bool test() override { return event_.passed(); }

  void wait() override {
    DeviceScope scope(gpu_);
    std::lock_guard lock(mutex_);
    if (!settled_) {
      try {
        wait_event();
        settle_locked();
      } catch (const Error& error) {  // the GPU failed, or the kernels outlived every deadline
        impl_->engine->stop_at(operation_, error);
        impl_->stop(error);
        finish(std::make_exception_ptr(Error(error.code(), error.message() + kRebuild)));
      }
    }
    if (!outcome_) return;
    try {
      std::rethrow_exception(outcome_);
    } catch (const Error& error) {
      throw Error::detached_copy(error);  // the stored one is shared with other waiters
    }
  }

  // The Buffer's stream has been drained: reads what the kernels left, finishes the results.
  void settle() {
    DeviceScope scope(gpu_, std::nothrow);
    std::lock_guard lock(mutex_);
    if (settled_) return;
    try {
      settle_locked();
    } catch (const Error& error) {
      finish(std::make_exception_ptr(Error::detached_copy(error)));
    }
  }

  void stream_wait(void* stream) override {
    DeviceScope scope(gpu_);
    cuda_check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), event_.get(), 0),
               "cudaStreamWaitEvent");
  }

 private:
  // As long as the kernels progress (the engine watches their heartbeat): a long operation is no timeout.
  void wait_event() {
    impl_->engine->wait_for(
        [this] {
          const cudaError_t status = cudaEventQuery(event_.get());
          if (status == cudaSuccess) return true;
          if (status != cudaErrorNotReady) cuda_check(status, "an operation's kernels");
          return false;
        },
        "an operation's kernels");
  }

  void settle_locked() {
    std::exception_ptr outcome;
    try {
      impl_->engine->raise_failures(operation_);
    } catch (const Error& error) {  // a role failed: the Buffer stops here
      impl_->stop(error);
      outcome = std::make_exception_ptr(Error(error.code(), error.message() + kRebuild));
    }
    impl_->engine->release_launches();
    if (!outcome && after_) {
      try {
        after_();  // may refuse this operation alone (a worst-case dispatch that overflowed)
      } catch (...) {
        outcome = std::current_exception();
      }
    }
    finish(outcome);
  }

  void finish(std::exception_ptr outcome) {
    outcome_ = outcome;
    settled_ = true;
    impl_ = nullptr;
    after_ = nullptr;
  }

  DeviceBackend::Impl* impl_;  // until settled
  int gpu_;
  std::uint32_t operation_;
  DeviceEvent event_;
  std::function<void()> after_;
  std::mutex mutex_;
  bool settled_ = false;
  std::exception_ptr outcome_;
};

// The Event of the operation just issued; `after` runs once it has run without failure.
Event DeviceBackend::Impl::track(std::function<void()> after) {
  auto completion = std::make_shared<DeviceOpCompletion>(*this, engine->last_operation(), std::move(after));
  {
    std::lock_guard lock(pending_mutex);
    std::erase_if(pending, [](const std::weak_ptr<DeviceOpCompletion>& entry) { return entry.expired(); });
    pending.push_back(completion);
  }
  auto state = std::make_shared<Event::State>();
  state->device = completion;
  return Event(state);
}

void DeviceBackend::Impl::settle_all() {
  std::vector<std::weak_ptr<DeviceOpCompletion>> all;
  {
    std::lock_guard lock(pending_mutex);
    all.swap(pending);
  }
  for (const std::weak_ptr<DeviceOpCompletion>& entry : all) {
    if (std::shared_ptr<DeviceOpCompletion> completion = entry.lock()) completion->settle();
  }
}

namespace {

// The receive tensors of a dispatch on the GPU (from the Buffer's cache), sized once the engine knows the
// rows.
kc::DeviceOutputs allocate_outputs(DeviceBackend::Impl& impl, DispatchResult& result, std::int64_t rows,
                                   std::int64_t hidden, DType dtype, int num_topk) {
  result.recv_x = impl.device_tensor({rows, hidden}, dtype);
  kc::DeviceOutputs out;
  out.recv_x = static_cast<std::byte*>(result.recv_x.data());
  if (dtype == DType::fp8_e4m3) {
    result.recv_x_scales = impl.device_tensor({rows, p::scale_blocks(hidden)}, DType::fp32);
    out.recv_x_scales = result.recv_x_scales.data_as<float>();
  }
  if (num_topk > 0) {
    result.recv_topk_idx = impl.device_tensor({rows, num_topk}, DType::int64);
    result.recv_topk_weights = impl.device_tensor({rows, num_topk}, DType::fp32);
    out.recv_topk_idx = result.recv_topk_idx.data_as<std::int64_t>();
    out.recv_topk_weights = result.recv_topk_weights.data_as<float>();
  }
  return out;
}

}  // namespace

DeviceBackend::DeviceBackend(Group& group, const Config& config, const p::BufferLayout& layout,
                             std::size_t bytes)
    : impl_(std::make_unique<Impl>(group)) {
  Impl& impl = *impl_;
  impl.config = config;
  const std::string unavailable = kc::gpu_unavailable_reason();
  if (!unavailable.empty()) fail(Errc::unsupported, "a CUDA Buffer needs a GPU: " + unavailable);
  int gpus = 0;
  cuda_check(cudaGetDeviceCount(&gpus), "cudaGetDeviceCount");
  impl.gpu = group.local_rank() % gpus;
  DeviceScope scope(impl.gpu);
  impl.stream_owner = detail::make_buffer_stream(impl.gpu);
  impl.stream = impl.stream_owner.get();
  impl.outputs = detail::make_device_block_cache(impl.gpu, kCachedOutputBytes, impl.stream_owner);

  const transport::Peers peers = runtime::group_peers(group, config.timeout);
  impl.memory = transport::make_cuda_ipc_peer_memory(peers, bytes, impl.gpu, "ferry-buffer");
  kc::DeviceRank rank;
  rank.rank = group.rank();
  rank.buffer = static_cast<std::byte*>(impl.memory->local());
  for (int l = 0; l < group.local_size(); ++l)
    rank.node_peers.push_back(static_cast<std::byte*>(impl.memory->peer(l)));

  kc::DeviceOptions options;
  options.device = impl.gpu;
  options.rdma_chunk = config.rdma_chunk;
  options.nvl_chunk = config.nvl_chunk;
  options.timeout = config.timeout;
  const detail::GpuSharing sharing = detail::gpu_sharing(group, impl.gpu, "ferry/buffer/gpu-uuid");
  if (!sharing.problem.empty()) fail(Errc::invalid_argument, "a CUDA Buffer: " + sharing.problem);
  options.other_ranks_on_device = sharing.ranks - 1;
  if (group.num_nodes() > 1) {
    const int rings = kc::device_rings_per_rank(layout.params.topo, options);
    impl.proxy =
        detail::make_device_proxy(peers, impl.memory->local(), bytes, rings, impl.gpu, config.timeout);
    for (int k = 0; k < rings; ++k) rank.rings.push_back(impl.proxy->ring(k).device_view());
  }
  std::vector<kc::DeviceRank> ranks;
  ranks.push_back(std::move(rank));
  impl.engine = std::make_unique<kc::DeviceEngine>(layout, std::move(ranks), options);
  impl.engine->keep_stream_alive(impl.stream, impl.stream_owner);
  impl.layouts = std::make_unique<kc::DeviceLayout>(impl.gpu);
  group.barrier("ferry/buffer/device-ready");
}

// In an order where nothing is released while something still uses it: the stream drained (the kernels end
// by themselves), the operations settled (their Events then need nothing of the Buffer), the peers past
// their last write, then the engine, the cached device blocks, the proxy and fabric, the peer memory; the
// stream goes when the last array freed in its order does.
DeviceBackend::~DeviceBackend() {
  Impl& impl = *impl_;
  DeviceScope scope(impl.gpu, std::nothrow);
  cudaStreamSynchronize(impl.stream);
  impl.settle_all();
  try {
    impl.group.barrier("ferry/buffer/device-close");  // no peer still writes into our memory
  } catch (...) {  // a destructor cannot report; the operations that failed already have
  }
  impl.engine.reset();
  impl.layouts.reset();
  impl.outputs->close();  // tensors still held give their blocks straight back to the device
  if (impl.proxy) impl.proxy->stop();
  impl.proxy.reset();
  impl.memory.reset();
  impl.stream_owner.reset();
}

Layout DeviceBackend::layout(const TensorView& topk_idx, std::int64_t num_experts, int max_nodes,
                             void* caller) {
  Impl& impl = *impl_;
  if (topk_idx.dim() != 2 || topk_idx.dtype() != DType::int64 || topk_idx.device() != Device::cuda) {
    fail(Errc::invalid_argument, "topk_idx must be a [T, K] int64 device tensor, not " + topk_idx.describe());
  }
  DeviceScope scope(impl.gpu);
  refuse_capture(caller, "get_layout");
  const int R = impl.group.world_size();
  const int L = impl.group.local_size();
  Layout layout;
  layout.num_tokens = topk_idx.size(0);
  layout.num_topk = static_cast<int>(topk_idx.size(1));
  layout.num_experts = num_experts;
  layout.num_ranks = R;
  layout.local_size = L;
  Tensor per_rank = impl.device_tensor({R}, DType::int64);
  Tensor per_node = impl.device_tensor({R / L}, DType::int64);
  Tensor per_expert = impl.device_tensor({num_experts}, DType::int64);
  layout.is_token_in_rank_device = impl.device_tensor({layout.num_tokens, R}, DType::uint8);
  impl.follow(caller);  // topk_idx was written on the caller's stream: its work so far comes first
  impl.layouts->compute(
      topk_idx.data_as<const std::int64_t>(), layout.num_tokens, layout.num_topk, num_experts, R, L,
      max_nodes,
      {per_rank.data_as<std::int64_t>(), per_node.data_as<std::int64_t>(), per_expert.data_as<std::int64_t>(),
       layout.is_token_in_rank_device.data_as<std::uint8_t>()},
      impl.stream);
  // The counts in the stream's order (a legacy-stream copy would not wait for the Buffer's non-blocking
  // stream, and would wait for every blocking stream of the process).
  layout.tokens_per_rank.resize(R);
  layout.tokens_per_node.resize(R / L);
  layout.tokens_per_expert.resize(num_experts);
  auto read = [&](std::vector<std::int64_t>& host, const Tensor& device) {
    if (host.empty()) return;
    cuda_check(cudaMemcpyAsync(host.data(), device.data(), sizeof(std::int64_t) * host.size(),
                               cudaMemcpyDeviceToHost, impl.stream),
               "layout counts");
  };
  read(layout.tokens_per_rank, per_rank);
  read(layout.tokens_per_node, per_node);
  read(layout.tokens_per_expert, per_expert);
  cuda_check(cudaStreamSynchronize(impl.stream), "the layout kernel");
  impl.layouts->check();
  return layout;
}

Pending<DispatchResult> DeviceBackend::dispatch(const DispatchInputs& inputs, const Layout& layout,
                                                const DispatchOptions& options,
                                                const kernels::host::OpSettings& settings) {
  Impl& impl = *impl_;
  for (auto [view, name] :
       {std::pair{&inputs.x, "x"}, std::pair{&inputs.x_scales, "x_scales"},
        std::pair{&inputs.topk_idx, "topk_idx"}, std::pair{&inputs.topk_weights, "topk_weights"}}) {
    require_device(*view, name);
  }
  DeviceScope scope(impl.gpu);
  refuse_capture(options.stream, "dispatch");
  if (std::optional<Event> refused = impl.refused()) return {*refused, std::make_shared<DispatchResult>()};
  const std::int64_t T = inputs.x.size(0);
  const std::int64_t H = inputs.x.size(1);
  const int K = static_cast<int>(inputs.topk_idx.size(1));
  const DType dtype = inputs.x.dtype();
  const int R = impl.group.world_size();

  // The layout on the GPU, or the host layout copied there.
  std::shared_ptr<Tensor> in_rank;
  const std::uint8_t* in_rank_device = nullptr;
  if (layout.on_device()) {
    in_rank_device = layout.is_token_in_rank_device.data_as<const std::uint8_t>();
  } else {
    in_rank = std::make_shared<Tensor>(impl.device_tensor({T, R}, DType::uint8));
    // In the stream's order: a cached block may still be read by an earlier operation on it.
    cuda_check(cudaMemcpyAsync(in_rank->data(), layout.is_token_in_rank.data(),
                               layout.is_token_in_rank.size(), cudaMemcpyHostToDevice, impl.stream),
               "copy of the layout");
    in_rank_device = in_rank->data_as<const std::uint8_t>();
  }
  impl.follow(options.stream);

  auto result = std::make_shared<DispatchResult>();
  kc::DeviceDispatchInput input;
  input.x = static_cast<const std::byte*>(inputs.x.data());
  input.x_scales = inputs.x_scales.data_as<const float>();
  input.topk_idx = inputs.topk_idx.data_as<const std::int64_t>();
  input.topk_weights = inputs.topk_weights.data_as<const float>();
  input.in_rank = in_rank_device;
  input.num_tokens = T;
  input.allocate = [&](std::int64_t rows) { return allocate_outputs(impl, *result, rows, H, dtype, K); };
  kc::DeviceDispatchShape shape;
  shape.kind = kind_of(dtype, "x");
  shape.hidden = H;
  shape.num_topk = K;
  shape.num_experts = layout.num_experts;
  shape.channels = settings.channels;
  shape.rdma_chunk = settings.rdma_chunk;
  shape.nvl_chunk = settings.nvl_chunk;
  shape.fingerprint = settings.fingerprint;
  shape.num_worst_tokens = options.num_worst_tokens;
  shape.has_caller_stream = true;  // it waits for the copies of topk_idx and the layout (buffer.hpp)
  shape.caller_stream = options.stream;
  std::vector<kc::DeviceDispatchResult> results;
  if (std::optional<Event> failed =
          impl.issue([&] { results = impl.engine->dispatch(shape, {input}, nullptr, impl.stream); })) {
    return {*failed, std::make_shared<DispatchResult>()};
  }
  auto device = std::make_shared<kc::DeviceDispatchResult>(std::move(results[0]));
  const std::int64_t worst = options.num_worst_tokens;
  const int rank = impl.group.rank();
  const std::int64_t experts_per_rank = layout.num_experts / R;
  const int alignment = options.expert_alignment;
  kc::DeviceEngine* engine = impl.engine.get();  // `finish` runs before the engine goes (settled first)
  // Runs once the dispatch's event has passed: reads on the engine's own stream, not behind the operations
  // queued after this one on the Buffer's stream (nor on the legacy stream, behind the caller's work).
  // Shared with every copy of the handle: combine and a cached dispatch refuse it by name once the overflow
  // is known. One issued before that meets the roles' capacity check (past_capacity) on the GPU instead.
  auto overflowed = std::make_shared<std::atomic<std::int64_t>>(0);
  auto finish = [result, device, in_rank, worst, rank, experts_per_rank, alignment, K, engine, overflowed] {
    const std::int64_t received = engine->received(*device->record);
    if (worst > 0 && received > worst) {
      overflowed->store(received);
      fail(Errc::invalid_argument, "rank " + std::to_string(rank) + " received " + std::to_string(received) +
                                       " tokens but num_worst_tokens is " + std::to_string(worst) +
                                       "; rows past it were dropped (the Buffer stays usable)");
    }
    result->num_recv_tokens = received;
    // tokens_per_local_expert from the received ids, on the host (small: rows x K).
    std::vector<std::int64_t> ids(static_cast<std::size_t>(received) * K);
    engine->read(ids.data(), result->recv_topk_idx.data(), ids.size() * sizeof(std::int64_t));
    result->tokens_per_local_expert.assign(experts_per_rank, 0);
    for (std::int64_t id : ids) {
      if (id >= 0 && id < experts_per_rank) ++result->tokens_per_local_expert[id];
    }
    for (std::int64_t& count : result->tokens_per_local_expert)
      count = (count + alignment - 1) / alignment * alignment;
    result->handle.num_recv_ = received;
  };
  result->handle.device_record_ = device->record;
  result->handle.overflowed_ = overflowed;
  result->handle.recv_rows_ = device->rows;
  result->handle.rank_ = rank;
  result->handle.num_tokens_ = T;
  result->handle.num_topk_ = K;
  result->handle.channels_ = settings.channels > 0 ? settings.channels : impl.config.num_channels();
  if (options.on_allocated) options.on_allocated(*result);
  return {impl.track(finish), result};
}

Pending<DispatchResult> DeviceBackend::dispatch(const TensorView& x, const TensorView& x_scales,
                                                const Handle& handle, const DispatchOptions& options,
                                                const kernels::host::OpSettings& settings) {
  Impl& impl = *impl_;
  require_device(x, "x");
  require_device(x_scales, "x_scales");
  if (!handle.device_record_) fail(Errc::invalid_argument, "the handle is not a CUDA Buffer's");
  DeviceScope scope(impl.gpu);
  refuse_capture(options.stream, "dispatch");
  if (std::optional<Event> refused = impl.refused()) return {*refused, std::make_shared<DispatchResult>()};
  impl.follow(options.stream);
  auto result = std::make_shared<DispatchResult>();
  const std::int64_t H = x.size(1);
  const DType dtype = x.dtype();
  kc::DeviceDispatchInput input;
  input.x = static_cast<const std::byte*>(x.data());
  input.x_scales = x_scales.data_as<const float>();
  input.num_tokens = x.size(0);
  input.allocate = [&](std::int64_t rows) { return allocate_outputs(impl, *result, rows, H, dtype, 0); };
  kc::DeviceDispatchShape shape;
  shape.kind = kind_of(dtype, "x");
  shape.hidden = H;
  shape.num_topk = handle.num_topk_;
  shape.rdma_chunk = settings.rdma_chunk;
  shape.nvl_chunk = settings.nvl_chunk;
  shape.fingerprint = settings.fingerprint;
  // The rows are the handle's dispatch's (the engine takes its sizing from the record): right whether or
  // not that dispatch's Event has been waited for (handle.num_recv_ is set only then).
  const std::vector<std::shared_ptr<kc::DeviceRecord>> records = {handle.device_record_};
  std::vector<kc::DeviceDispatchResult> results;
  if (std::optional<Event> failed =
          impl.issue([&] { results = impl.engine->dispatch(shape, {input}, &records, impl.stream); })) {
    return {*failed, std::make_shared<DispatchResult>()};
  }
  auto device = std::make_shared<kc::DeviceDispatchResult>(std::move(results[0]));
  result->handle = handle;
  // Known now when the handle's dispatch was sized by its counts; for worst-case sizing, once this one ran.
  result->num_recv_tokens = device->num_recv;
  result->handle.num_recv_ = device->num_recv;
  if (options.on_allocated) options.on_allocated(*result);
  kc::DeviceEngine* engine = impl.engine.get();
  return {impl.track([result, device, engine] {
            const std::int64_t received = engine->received(*device->record);
            result->num_recv_tokens = received;
            result->handle.num_recv_ = received;
          }),
          result};
}

Pending<CombineResult> DeviceBackend::combine(const TensorView& y, const Handle& handle,
                                              const CombineOptions& options,
                                              const kernels::host::OpSettings& settings) {
  Impl& impl = *impl_;
  require_device(y, "y");
  require_device(options.topk_weights, "topk_weights");
  require_device(options.bias, "bias");
  if (!handle.device_record_) fail(Errc::invalid_argument, "the handle is not a CUDA Buffer's");
  DeviceScope scope(impl.gpu);
  refuse_capture(options.stream, "combine");
  if (std::optional<Event> refused = impl.refused()) return {*refused, std::make_shared<CombineResult>()};
  impl.follow(options.stream);
  auto result = std::make_shared<CombineResult>();
  result->out = impl.device_tensor({handle.num_tokens_, y.size(1)}, y.dtype());
  const bool with_weights = !options.topk_weights.empty();
  if (with_weights)
    result->topk_weights = impl.device_tensor({handle.num_tokens_, handle.num_topk_}, DType::fp32);
  kc::DeviceCombineInput input;
  input.y = static_cast<const std::byte*>(y.data());
  input.y_weights = with_weights ? options.topk_weights.data_as<const float>() : nullptr;
  input.bias = options.bias.empty() ? nullptr : static_cast<const std::byte*>(options.bias.data());
  input.out = static_cast<std::byte*>(result->out.data());
  input.out_weights = with_weights ? result->topk_weights.data_as<float>() : nullptr;
  input.record = handle.device_record_;
  kc::DeviceCombineShape shape;
  shape.kind = kind_of(y.dtype(), "y");
  shape.hidden = y.size(1);
  shape.rdma_chunk = settings.rdma_chunk;
  shape.nvl_chunk = settings.nvl_chunk;
  shape.fingerprint = settings.fingerprint;
  if (std::optional<Event> failed = impl.issue([&] { impl.engine->combine(shape, {input}, impl.stream); })) {
    return {*failed, std::make_shared<CombineResult>()};
  }
  if (options.on_allocated) options.on_allocated(*result);
  return {impl.track({}), result};
}

BufferTraffic DeviceBackend::traffic() const {
  DeviceScope scope(impl_->gpu);
  const kc::DeviceTraffic mine = impl_->engine->traffic().at(0);
  return {public_counters(mine.dispatch), public_counters(mine.combine), public_counters(mine.notify)};
}

}  // namespace ferry
