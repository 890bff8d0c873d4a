#include "device_backend.hpp"

#include <cuda_runtime_api.h>

#include <chrono>
#include <mutex>
#include <string>

#include "ferry/core/error.hpp"
#include "ferry/kernels/cuda/device_engine.hpp"
#include "ferry/kernels/cuda/device_layout.hpp"
#include "ferry/runtime/group_peers.hpp"
#include "ferry/transport/fabric.hpp"
#include "ferry/transport/peer_memory.hpp"
#include "ferry/transport/proxy.hpp"
#include "operation_queue.hpp"
#include "traffic_counters.hpp"

namespace ferry {

namespace {

namespace p = kernels::protocol;
namespace kc = kernels::cuda;

void check(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) {
    fail(Errc::system,
         "cuda: " + what + ": " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
  }
}

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

// One CUDA event per operation: recorded on the communication stream after its kernels.
class StreamEvent {
 public:
  StreamEvent() { check(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), "cudaEventCreate"); }
  ~StreamEvent() { cudaEventDestroy(event_); }
  StreamEvent(const StreamEvent&) = delete;
  StreamEvent& operator=(const StreamEvent&) = delete;
  cudaEvent_t get() const { return event_; }

 private:
  cudaEvent_t event_ = nullptr;
};

}  // namespace

struct DeviceBackend::Impl {
  Group& group;
  Config config;
  int gpu = 0;
  cudaStream_t stream = nullptr;
  std::unique_ptr<transport::PeerMemory> memory;
  std::unique_ptr<transport::Proxy> proxy;
  std::unique_ptr<kc::DeviceEngine> engine;
  std::unique_ptr<kc::DeviceLayout> layouts;

  explicit Impl(Group& g) : group(g) {}

  // The caller's stream's work so far comes first.
  void follow(void* caller) {
    StreamEvent before;
    check(cudaEventRecord(before.get(), static_cast<cudaStream_t>(caller)), "cudaEventRecord(caller stream)");
    check(cudaStreamWaitEvent(stream, before.get(), 0), "cudaStreamWaitEvent");
  }
};

namespace {

// Completion of one operation: its CUDA event, then the roles' failure records.
class Completion final : public DeviceCompletion {
 public:
  Completion(DeviceBackend::Impl& impl, std::function<void()> after)
      : impl_(impl), event_(std::make_shared<StreamEvent>()), after_(std::move(after)) {
    check(cudaEventRecord(event_->get(), impl.stream), "cudaEventRecord");
  }

  bool test() override {
    const cudaError_t status = cudaEventQuery(event_->get());
    if (status == cudaErrorNotReady) return false;
    return true;
  }

  void wait() override {
    Deadline deadline(impl_.config.timeout * 2 + std::chrono::seconds(10));
    Backoff backoff;
    while (true) {
      const cudaError_t status = cudaEventQuery(event_->get());
      if (status == cudaSuccess) break;
      if (status != cudaErrorNotReady) check(status, "an operation's kernels");
      if (deadline.expired()) fail(Errc::timeout, "cuda: an operation's kernels did not finish in time");
      backoff.pause();
    }
    std::call_once(once_, [this] {
      impl_.engine->raise_failures();
      if (after_) after_();
    });
  }

  void stream_wait(void* stream) override {
    check(cudaStreamWaitEvent(static_cast<cudaStream_t>(stream), event_->get(), 0), "cudaStreamWaitEvent");
  }

 private:
  DeviceBackend::Impl& impl_;
  std::shared_ptr<StreamEvent> event_;
  std::function<void()> after_;
  std::once_flag once_;
};

// The receive tensors of a dispatch on the GPU, sized once the engine knows the rows.
kc::DeviceOutputs allocate_outputs(DispatchResult& result, std::int64_t rows, std::int64_t hidden,
                                   DType dtype, int num_topk) {
  result.recv_x = Tensor({rows, hidden}, dtype, Tensor::Init::uninitialized, Device::cuda);
  kc::DeviceOutputs out;
  out.recv_x = static_cast<std::byte*>(result.recv_x.data());
  if (dtype == DType::fp8_e4m3) {
    result.recv_x_scales =
        Tensor({rows, p::scale_blocks(hidden)}, DType::fp32, Tensor::Init::uninitialized, Device::cuda);
    out.recv_x_scales = result.recv_x_scales.data_as<float>();
  }
  if (num_topk > 0) {
    result.recv_topk_idx = Tensor({rows, num_topk}, DType::int64, Tensor::Init::uninitialized, Device::cuda);
    result.recv_topk_weights =
        Tensor({rows, num_topk}, DType::fp32, Tensor::Init::uninitialized, Device::cuda);
    out.recv_topk_idx = result.recv_topk_idx.data_as<std::int64_t>();
    out.recv_topk_weights = result.recv_topk_weights.data_as<float>();
  }
  return out;
}

Event device_event(DeviceBackend::Impl& impl, std::function<void()> after) {
  auto state = std::make_shared<Event::State>();
  state->device = std::make_shared<Completion>(impl, std::move(after));
  return Event(state);
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
  check(cudaGetDeviceCount(&gpus), "cudaGetDeviceCount");
  impl.gpu = group.local_rank() % gpus;
  check(cudaSetDevice(impl.gpu), "cudaSetDevice");
  check(cudaStreamCreateWithFlags(&impl.stream, cudaStreamNonBlocking), "cudaStreamCreate");

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
  if (group.num_nodes() > 1) {
    transport::FabricOptions fabric_options;
    fabric_options.kind = transport::fabric_kind_from_env();
    std::unique_ptr<transport::Fabric> fabric = transport::make_fabric(peers, fabric_options);
    // Device memory across nodes needs a fabric that can register it: verbs (dma-buf or nvidia-peermem), or a
    // UCX built with CUDA support; the fabric says which is missing.
    const transport::RegionId region =
        fabric->register_region(impl.memory->local(), bytes, transport::MemoryKind::cuda);
    if (region != 0) fail(Errc::internal, "the buffer's fabric region is not region 0");
    fabric->connect();
    transport::ProxyOptions proxy_options;
    proxy_options.rings = kc::device_rings_per_rank(layout.params.topo, options);
    proxy_options.memory = transport::RingMemory::cuda_mapped;
    proxy_options.timeout = config.timeout;
    impl.proxy = std::make_unique<transport::Proxy>(std::move(fabric), proxy_options);
    for (int k = 0; k < proxy_options.rings; ++k) rank.rings.push_back(impl.proxy->ring(k).device_view());
  }
  std::vector<kc::DeviceRank> ranks;
  ranks.push_back(std::move(rank));
  impl.engine = std::make_unique<kc::DeviceEngine>(layout, std::move(ranks), options);
  impl.layouts = std::make_unique<kc::DeviceLayout>(impl.gpu);
  group.barrier("ferry/buffer/device-ready");
}

DeviceBackend::~DeviceBackend() {
  Impl& impl = *impl_;
  try {
    cudaSetDevice(impl.gpu);
    cudaStreamSynchronize(impl.stream);
    impl.group.barrier("ferry/buffer/device-close");  // no peer still writes into our memory
  } catch (...) {  // a destructor cannot report; the operations that failed already have
  }
  impl.engine.reset();
  if (impl.proxy) impl.proxy->stop();
  impl.proxy.reset();
  impl.memory.reset();
  if (impl.stream != nullptr) cudaStreamDestroy(impl.stream);
}

Layout DeviceBackend::layout(const TensorView& topk_idx, std::int64_t num_experts, int max_nodes) {
  Impl& impl = *impl_;
  if (topk_idx.dim() != 2 || topk_idx.dtype() != DType::int64 || topk_idx.device() != Device::cuda) {
    fail(Errc::invalid_argument, "topk_idx must be a [T, K] int64 device tensor, not " + topk_idx.describe());
  }
  const int R = impl.group.world_size();
  const int L = impl.group.local_size();
  Layout layout;
  layout.num_tokens = topk_idx.size(0);
  layout.num_topk = static_cast<int>(topk_idx.size(1));
  layout.num_experts = num_experts;
  layout.num_ranks = R;
  layout.local_size = L;
  check(cudaSetDevice(impl.gpu), "cudaSetDevice");
  Tensor per_rank({R}, DType::int64, Tensor::Init::uninitialized, Device::cuda);
  Tensor per_node({R / L}, DType::int64, Tensor::Init::uninitialized, Device::cuda);
  Tensor per_expert({num_experts}, DType::int64, Tensor::Init::uninitialized, Device::cuda);
  layout.is_token_in_rank_device =
      Tensor({layout.num_tokens, R}, DType::uint8, Tensor::Init::uninitialized, Device::cuda);
  impl.layouts->compute(
      topk_idx.data_as<const std::int64_t>(), layout.num_tokens, layout.num_topk, num_experts, R, L,
      max_nodes,
      {per_rank.data_as<std::int64_t>(), per_node.data_as<std::int64_t>(), per_expert.data_as<std::int64_t>(),
       layout.is_token_in_rank_device.data_as<std::uint8_t>()},
      impl.stream);
  check(cudaStreamSynchronize(impl.stream), "the layout kernel");
  impl.layouts->check();
  layout.tokens_per_rank.resize(R);
  layout.tokens_per_node.resize(R / L);
  layout.tokens_per_expert.resize(num_experts);
  check(cudaMemcpy(layout.tokens_per_rank.data(), per_rank.data(), 8 * R, cudaMemcpyDeviceToHost),
        "layout counts");
  check(cudaMemcpy(layout.tokens_per_node.data(), per_node.data(), 8 * (R / L), cudaMemcpyDeviceToHost),
        "layout counts");
  check(
      cudaMemcpy(layout.tokens_per_expert.data(), per_expert.data(), 8 * num_experts, cudaMemcpyDeviceToHost),
      "layout counts");
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
  check(cudaSetDevice(impl.gpu), "cudaSetDevice");
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
    in_rank = std::make_shared<Tensor>(std::initializer_list<std::int64_t>{T, R}, DType::uint8,
                                       Tensor::Init::uninitialized, Device::cuda);
    check(cudaMemcpy(in_rank->data(), layout.is_token_in_rank.data(), layout.is_token_in_rank.size(),
                     cudaMemcpyHostToDevice),
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
  input.allocate = [&](std::int64_t rows) { return allocate_outputs(*result, rows, H, dtype, K); };
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
  std::vector<kc::DeviceDispatchResult> results = impl.engine->dispatch(shape, {input}, nullptr, impl.stream);
  auto device = std::make_shared<kc::DeviceDispatchResult>(std::move(results[0]));
  const std::int64_t worst = options.num_worst_tokens;
  const int rank = impl.group.rank();
  const std::int64_t experts_per_rank = layout.num_experts / R;
  const int alignment = options.expert_alignment;
  auto finish = [&impl, result, device, in_rank, worst, rank, experts_per_rank, alignment, T, K] {
    const std::int64_t received = kc::device_num_recv(*device->record);
    if (worst > 0 && received > worst) {
      fail(Errc::invalid_argument, "rank " + std::to_string(rank) + " received " + std::to_string(received) +
                                       " tokens but num_worst_tokens is " + std::to_string(worst) +
                                       "; rows past it were dropped (the Buffer stays usable)");
    }
    result->num_recv_tokens = received;
    // tokens_per_local_expert from the received ids, on the host (small: rows x K).
    std::vector<std::int64_t> ids(static_cast<std::size_t>(received) * K);
    if (!ids.empty()) {
      check(cudaMemcpy(ids.data(), result->recv_topk_idx.data(), ids.size() * 8, cudaMemcpyDeviceToHost),
            "recv_topk_idx");
    }
    result->tokens_per_local_expert.assign(experts_per_rank, 0);
    for (std::int64_t id : ids) {
      if (id >= 0 && id < experts_per_rank) ++result->tokens_per_local_expert[id];
    }
    for (std::int64_t& count : result->tokens_per_local_expert)
      count = (count + alignment - 1) / alignment * alignment;
    result->handle.num_recv_ = received;
    impl.engine->release_launches();
  };
  result->handle.device_record_ = device->record;
  result->handle.recv_rows_ = device->rows;
  result->handle.rank_ = rank;
  result->handle.num_tokens_ = T;
  result->handle.num_topk_ = K;
  result->handle.channels_ = settings.channels > 0 ? settings.channels : impl.config.num_channels();
  if (options.on_allocated) options.on_allocated(*result);
  return {device_event(impl, finish), result};
}

Pending<DispatchResult> DeviceBackend::dispatch(const TensorView& x, const TensorView& x_scales,
                                                const Handle& handle, const DispatchOptions& options,
                                                const kernels::host::OpSettings& settings) {
  Impl& impl = *impl_;
  require_device(x, "x");
  require_device(x_scales, "x_scales");
  if (!handle.device_record_) fail(Errc::invalid_argument, "the handle is not a CUDA Buffer's");
  check(cudaSetDevice(impl.gpu), "cudaSetDevice");
  impl.follow(options.stream);
  auto result = std::make_shared<DispatchResult>();
  const std::int64_t H = x.size(1);
  const DType dtype = x.dtype();
  kc::DeviceDispatchInput input;
  input.x = static_cast<const std::byte*>(x.data());
  input.x_scales = x_scales.data_as<const float>();
  input.num_tokens = x.size(0);
  input.allocate = [&](std::int64_t rows) { return allocate_outputs(*result, rows, H, dtype, 0); };
  kc::DeviceDispatchShape shape;
  shape.kind = kind_of(dtype, "x");
  shape.hidden = H;
  shape.num_topk = handle.num_topk_;
  shape.rdma_chunk = settings.rdma_chunk;
  shape.nvl_chunk = settings.nvl_chunk;
  shape.fingerprint = settings.fingerprint;
  shape.num_worst_tokens = handle.recv_rows() > handle.num_recv_ ? handle.recv_rows() : 0;
  const std::vector<std::shared_ptr<kc::DeviceRecord>> records = {handle.device_record_};
  std::vector<kc::DeviceDispatchResult> results =
      impl.engine->dispatch(shape, {input}, &records, impl.stream);
  auto device = std::make_shared<kc::DeviceDispatchResult>(std::move(results[0]));
  result->handle = handle;
  result->num_recv_tokens = handle.num_recv_;
  if (options.on_allocated) options.on_allocated(*result);
  return {device_event(impl, [&impl, device] { impl.engine->release_launches(); }), result};
}

Pending<CombineResult> DeviceBackend::combine(const TensorView& y, const Handle& handle,
                                              const CombineOptions& options,
                                              const kernels::host::OpSettings& settings) {
  Impl& impl = *impl_;
  require_device(y, "y");
  require_device(options.topk_weights, "topk_weights");
  require_device(options.bias, "bias");
  if (!handle.device_record_) fail(Errc::invalid_argument, "the handle is not a CUDA Buffer's");
  check(cudaSetDevice(impl.gpu), "cudaSetDevice");
  impl.follow(options.stream);
  auto result = std::make_shared<CombineResult>();
  result->out = Tensor({handle.num_tokens_, y.size(1)}, y.dtype(), Tensor::Init::uninitialized, Device::cuda);
  const bool with_weights = !options.topk_weights.empty();
  if (with_weights) {
    result->topk_weights = Tensor({handle.num_tokens_, handle.num_topk_}, DType::fp32,
                                  Tensor::Init::uninitialized, Device::cuda);
  }
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
  impl.engine->combine(shape, {input}, impl.stream);
  if (options.on_allocated) options.on_allocated(*result);
  return {device_event(impl, [&impl] { impl.engine->release_launches(); }), result};
}

BufferTraffic DeviceBackend::traffic() const {
  const kc::DeviceTraffic mine = impl_->engine->traffic().at(0);
  return {public_counters(mine.dispatch), public_counters(mine.combine), public_counters(mine.notify)};
}

}  // namespace ferry
