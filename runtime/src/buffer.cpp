#include "ferry/buffer.hpp"

#include <algorithm>
#include <cstring>
#include <mutex>
#include <thread>

#include "buffer_checks.hpp"
#include "device_backend.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/host/engine.hpp"
#include "ferry/transport/store.hpp"
#include "group_transport.hpp"
#include "local_cluster.hpp"
#include "op_settings.hpp"
#include "operation_queue.hpp"
#include "protocol_params.hpp"
#include "traffic_counters.hpp"

namespace ferry {

namespace {

namespace p = kernels::protocol;
namespace h = kernels::host;

DType dtype_of(p::PayloadKind kind) {
  switch (kind) {
    case p::PayloadKind::bf16:
      return DType::bf16;
    case p::PayloadKind::fp32:
      return DType::fp32;
    case p::PayloadKind::fp8_e4m3:
      return DType::fp8_e4m3;
  }
  return DType::fp32;
}

// Receive tensors of `rows` rows; topk tensors only when topk travels (num_topk > 0).
h::DispatchOutputs allocate_outputs(DispatchResult& result, std::int64_t rows, const RowShape& shape,
                                    int num_topk) {
  // Every received row is written whole; rows past the received count (worst-case sizing) are zeroed after.
  result.recv_x = Tensor({rows, shape.hidden}, dtype_of(shape.kind), Tensor::Init::uninitialized);
  h::DispatchOutputs outputs;
  outputs.capacity = rows;
  outputs.recv_x = static_cast<std::byte*>(result.recv_x.data());
  if (shape.kind == p::PayloadKind::fp8_e4m3) {
    result.recv_x_scales =
        Tensor({rows, p::scale_blocks(shape.hidden)}, DType::fp32, Tensor::Init::uninitialized);
    outputs.recv_x_scales = result.recv_x_scales.data_as<float>();
  }
  if (num_topk > 0) {
    result.recv_topk_idx = Tensor({rows, num_topk}, DType::int64);
    std::fill_n(result.recv_topk_idx.data_as<std::int64_t>(), rows * num_topk, -1);
    result.recv_topk_weights = Tensor({rows, num_topk}, DType::fp32);
    outputs.recv_topk_idx = result.recv_topk_idx.data_as<std::int64_t>();
    outputs.recv_topk_weights = result.recv_topk_weights.data_as<float>();
  }
  return outputs;
}

// Worst-case outputs: the rows no token landed in read as zeros.
void zero_rows_past(DispatchResult& result, std::int64_t received) {
  for (Tensor* tensor : {&result.recv_x, &result.recv_x_scales}) {
    if (tensor->dim() != 2 || received >= tensor->size(0)) continue;
    std::size_t row_bytes = tensor->bytes() / static_cast<std::size_t>(tensor->size(0));
    std::memset(static_cast<std::byte*>(tensor->data()) + received * row_bytes, 0,
                (tensor->size(0) - received) * row_bytes);
  }
}

std::vector<std::int64_t> count_local_experts(const DispatchResult& result, std::int64_t experts_per_rank,
                                              int alignment) {
  std::vector<std::int64_t> counts(experts_per_rank, 0);
  const auto* ids = result.recv_topk_idx.data_as<const std::int64_t>();
  std::int64_t slots = result.num_recv_tokens * result.recv_topk_idx.size(1);
  for (std::int64_t i = 0; i < slots; ++i) {
    if (ids[i] >= 0 && ids[i] < experts_per_rank) ++counts[ids[i]];
  }
  for (std::int64_t& count : counts) count = (count + alignment - 1) / alignment * alignment;
  return counts;
}

// The routing of one dispatch, taken at the call.
struct Routing {
  std::vector<std::int64_t> topk_idx;
  std::vector<std::uint8_t> in_rank;
};

}  // namespace

// ---- Handle ----

// A CUDA Buffer's handle has no host record: its counts are kept in the handle (DeviceBackend fills them).
std::int64_t Handle::num_tokens() const {
  return record_ ? record_->num_tokens : num_tokens_;
}
std::int64_t Handle::num_recv_tokens() const {
  return record_ ? record_->num_recv : num_recv_;
}
std::span<const std::int32_t> Handle::recv_src_rank() const {
  return record_ ? std::span<const std::int32_t>(record_->recv_src_rank) : std::span<const std::int32_t>();
}
std::span<const std::int32_t> Handle::recv_src_token() const {
  return record_ ? std::span<const std::int32_t>(record_->recv_src_token) : std::span<const std::int32_t>();
}

// ---- Buffer ----

struct Buffer::Impl {
  LocalCluster::Impl* cluster = nullptr;      // in-process ranks
  std::unique_ptr<GroupTransport> transport;  // multi-process ranks
  Config config;
  int rank = 0;
  int num_nodes = 0;
  int local_size = 0;
  std::unique_ptr<h::Engine> engine;
  std::unique_ptr<DeviceBackend> device_backend;  // CUDA Buffers: everything runs there instead
  mutable std::mutex traffic_mutex;
  BufferTraffic traffic;
  std::unique_ptr<OperationQueue> queue;  // stopped first: it runs operations on the engine

  int num_ranks() const { return num_nodes * local_size; }

  void publish_traffic() {
    const h::EngineTraffic& totals = engine->traffic();
    std::lock_guard lock(traffic_mutex);
    traffic.dispatch = public_counters(totals.dispatch);
    traffic.combine = public_counters(totals.combine);
    traffic.notify = public_counters(totals.notify);
  }

  // A cached dispatch or a combine runs on its dispatch's channels; a per-call Config may change only the
  // chunks.
  h::OpSettings handle_settings(const Handle& handle, const std::optional<Config>& call) const {
    const int channels = handle.record_ ? handle.record_->channels : handle.channels_;
    if (call && call->num_channels() != channels) {
      fail(Errc::invalid_argument,
           "the per-call Config has num_sms = " + std::to_string(call->num_sms) +
               " but this handle's dispatch ran with num_sms = " + std::to_string(2 * channels) +
               ": a cached dispatch and a combine use their dispatch's");
    }
    return op_settings(config, call ? &*call : nullptr, channels);
  }

  void check_handle(const Handle& handle) const {
    if (!handle.valid())
      fail(Errc::invalid_argument, "the handle is empty: pass the handle of a finished dispatch");
    if (handle.overflowed_ && handle.overflowed_->load() > 0) {
      fail(Errc::invalid_argument,
           "the handle's dispatch received " + std::to_string(handle.overflowed_->load()) +
               " tokens but num_worst_tokens was " + std::to_string(handle.recv_rows_) +
               ": its rows past that were dropped, so it can be neither combined nor repeated (dispatch "
               "again with a larger num_worst_tokens; the Buffer stays usable)");
    }
    if (handle.rank_ != rank) {
      fail(Errc::invalid_argument, "the handle belongs to rank " + std::to_string(handle.rank_) +
                                       ", not to rank " + std::to_string(rank));
    }
  }
};

namespace {

h::EngineOptions engine_options(const Config& config) {
  h::EngineOptions options;
  options.rdma_chunk = config.rdma_chunk;
  options.nvl_chunk = config.nvl_chunk;
  options.timeout = config.timeout;
  int cores = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  int workers = config.host_workers > 0 ? config.host_workers : cores;
  options.workers = std::clamp(workers, 1, config.num_channels());
  options.thread_per_role = config.host_thread_per_role;
  options.lanes = config.host_lanes;
  options.slices = config.host_lanes > 1 ? 2 : 1;
  return options;
}

// Tells the job's store of this rank's first failed operation, so that every rank learns of it within
// moments, naming the cause (a rank that waits for this one would otherwise wait for its whole timeout,
// and a frozen peer would be reported by each rank separately).
OperationQueue::FailureHook failure_reporter(Group& group) {
  std::shared_ptr<transport::StoreWatch> watch = group.failure_watch();
  if (!watch) return {};
  return [watch, rank = group.rank()](const std::string& what) {
    watch->report("rank " + std::to_string(rank) + " failed: " + std::string(without_ferry_prefix(what)));
  };
}

// Every rank must build its Buffer with the same shared settings: compare them now, by name, rather than fail
// later with a fingerprint.
void check_same_config(Group& group, const Config& config) {
  const std::string mine = config.to_json();
  const auto all = group.all_gather("ferry/buffer/config",
                                    {reinterpret_cast<const std::uint8_t*>(mine.data()), mine.size()});
  for (std::size_t r = 0; r < all.size(); ++r) {
    const Config theirs = Config::from_json(std::string(all[r].begin(), all[r].end()));
    const std::string difference = config_mismatch(config, group.rank(), theirs, static_cast<int>(r));
    if (!difference.empty())
      fail(Errc::invalid_argument, "ranks build their Buffers differently: " + difference);
  }
}

}  // namespace

Buffer::Buffer(Group& group, const Config& config, Device device) : impl_(std::make_unique<Impl>()) {
  config.validate(group.num_nodes(), group.local_size());
  check_same_config(group, config);
  auto layout = p::make_buffer_layout(layout_params(config, group.num_nodes(), group.local_size()));
  std::size_t bytes = registered_bytes(config, layout);
  Impl& impl = *impl_;
  impl.config = config;
  impl.rank = group.rank();
  impl.num_nodes = group.num_nodes();
  impl.local_size = group.local_size();
  if (device == Device::cuda) {
    impl.device_backend = std::make_unique<DeviceBackend>(group, config, layout, bytes);
    return;
  }
  h::EngineOptions options = engine_options(config);
  impl.transport = std::make_unique<GroupTransport>(
      group, layout, bytes, h::engine_threads(options, config.num_channels()), config.timeout);
  impl.engine = std::make_unique<h::Engine>(impl.rank, layout, impl.transport->memory(), options);
  impl.queue = std::make_unique<OperationQueue>(impl.rank, failure_reporter(group));
}

Buffer::Buffer(LocalCluster& cluster, int rank) : impl_(std::make_unique<Impl>()) {
  LocalCluster::Impl& world = *cluster.impl_;
  world.claim(rank);
  Impl& impl = *impl_;
  impl.cluster = &world;
  impl.config = world.config;
  impl.rank = rank;
  impl.num_nodes = world.num_nodes;
  impl.local_size = world.local_size;
  h::EngineOptions options = engine_options(impl.config);
  try {
    impl.engine =
        std::make_unique<h::Engine>(rank, world.world->layout(), world.world->memory(rank), options);
  } catch (...) {
    world.release(rank);
    throw;
  }
  impl.queue = std::make_unique<OperationQueue>(rank);
}

Buffer::~Buffer() {
  impl_->device_backend.reset();
  impl_->queue.reset();
  impl_->engine.reset();
  impl_->transport.reset();
  if (impl_->cluster) impl_->cluster->release(impl_->rank);
}

int Buffer::rank() const {
  return impl_->rank;
}
int Buffer::num_ranks() const {
  return impl_->num_ranks();
}
int Buffer::num_nodes() const {
  return impl_->num_nodes;
}
int Buffer::local_size() const {
  return impl_->local_size;
}
int Buffer::num_channels() const {
  return impl_->config.num_channels();
}
const Config& Buffer::config() const {
  return impl_->config;
}
Device Buffer::device() const {
  return impl_->device_backend ? Device::cuda : Device::host;
}

BufferTraffic Buffer::traffic() const {
  if (impl_->device_backend) return impl_->device_backend->traffic();
  std::lock_guard lock(impl_->traffic_mutex);
  return impl_->traffic;
}

Layout Buffer::get_layout(const TensorView& topk_idx, std::int64_t num_experts, void* stream) const {
  if (impl_->device_backend && topk_idx.device() == Device::cuda) {
    return impl_->device_backend->layout(topk_idx, num_experts, impl_->config.max_nodes, stream);
  }
  return compute_layout(topk_idx, num_experts, num_ranks(), local_size(), impl_->config.max_nodes);
}

Pending<DispatchResult> Buffer::dispatch(const DispatchInputs& inputs, const Layout& layout,
                                         const DispatchOptions& options) {
  Impl& impl = *impl_;
  const Device device = this->device();
  RowShape shape = check_dispatch_rows(inputs.x, inputs.x_scales, impl.config, device);
  const int num_topk = check_topk(inputs, shape.rows, impl.config, device);
  check_layout(layout, shape.rows, num_topk, num_ranks(), local_size(), device);
  if (device == Device::host) check_topk_weights(inputs.topk_weights);
  if (options.num_worst_tokens < 0) {
    fail(Errc::invalid_argument,
         "num_worst_tokens must be >= 0, not " + std::to_string(options.num_worst_tokens));
  }
  if (options.expert_alignment < 1) {
    fail(Errc::invalid_argument,
         "expert_alignment must be >= 1, not " + std::to_string(options.expert_alignment));
  }
  const h::OpSettings settings = op_settings(impl.config, options.config ? &*options.config : nullptr);
  if (impl.device_backend) return impl.device_backend->dispatch(inputs, layout, options, settings);

  if (layout.on_device()) {
    fail(Errc::invalid_argument,
         "the layout was computed on the GPU (by a CUDA Buffer) but this Buffer runs "
         "the host backend: compute it with this Buffer's get_layout");
  }
  // The routing is taken now: the caller may reuse topk_idx and the layout as soon as this returns.
  auto routing = std::make_shared<Routing>();
  routing->topk_idx.assign(inputs.topk_idx.data_as<const std::int64_t>(),
                           inputs.topk_idx.data_as<const std::int64_t>() + shape.rows * num_topk);
  routing->in_rank = layout.is_token_in_rank;

  auto result = std::make_shared<DispatchResult>();
  const std::int64_t worst = options.num_worst_tokens;
  h::DispatchOutputs preallocated;
  if (worst > 0) preallocated = allocate_outputs(*result, worst, shape, num_topk);
  const std::int64_t num_experts = layout.num_experts;
  const int alignment = options.expert_alignment;
  auto on_allocated = options.on_allocated;
  if (worst > 0 && on_allocated) {
    on_allocated(*result);
    on_allocated = nullptr;
  }
  Event event = impl.queue->submit([&impl, inputs, shape, num_topk, num_experts, worst, alignment, settings,
                                    preallocated, routing, result, on_allocated] {
    h::DispatchJob job;
    job.kind = shape.kind;
    job.hidden = shape.hidden;
    job.num_experts = num_experts;
    job.num_tokens = shape.rows;
    job.num_topk = num_topk;
    job.x = static_cast<const std::byte*>(inputs.x.data());
    job.x_scales = inputs.x_scales.data_as<const float>();
    job.topk_idx = routing->topk_idx.data();
    job.topk_weights = inputs.topk_weights.data_as<const float>();
    job.in_rank = routing->in_rank.data();
    job.settings = settings;
    job.allocate = [&](std::int64_t num_recv) {
      if (worst > 0) return preallocated;
      h::DispatchOutputs outputs = allocate_outputs(*result, num_recv, shape, num_topk);
      if (on_allocated) on_allocated(*result);
      return outputs;
    };
    auto record = std::make_shared<h::DispatchRecord>(impl.engine->dispatch(job));
    impl.publish_traffic();
    if (worst > 0 && record->num_recv > worst) {
      // Every ring finished its share (rows past the outputs were counted and dropped): only this call fails.
      // Its handle (which a caller may hold through on_allocated) is refused by combine and cached dispatch.
      result->handle.record_ = std::move(record);
      result->handle.recv_rows_ = worst;
      result->handle.rank_ = impl.rank;
      result->handle.overflowed_ =
          std::make_shared<std::atomic<std::int64_t>>(result->handle.record_->num_recv);
      throw OperationRefused{
          Error(Errc::invalid_argument, "rank " + std::to_string(impl.rank) + " received " +
                                            std::to_string(result->handle.overflowed_->load()) +
                                            " tokens but num_worst_tokens is " + std::to_string(worst) +
                                            "; rows past it were dropped (the Buffer stays usable)")};
    }
    result->num_recv_tokens = record->num_recv;
    if (worst > 0) zero_rows_past(*result, record->num_recv);
    result->tokens_per_local_expert = count_local_experts(*result, num_experts / impl.num_ranks(), alignment);
    result->handle.record_ = std::move(record);
    result->handle.recv_rows_ = worst > 0 ? worst : result->num_recv_tokens;
    result->handle.rank_ = impl.rank;
  });
  return {std::move(event), std::move(result)};
}

Pending<DispatchResult> Buffer::dispatch(const TensorView& x, const TensorView& x_scales,
                                         const Handle& handle, const DispatchOptions& options) {
  Impl& impl = *impl_;
  impl.check_handle(handle);
  RowShape shape = check_dispatch_rows(x, x_scales, impl.config, device());
  if (shape.rows != handle.num_tokens()) {
    fail(Errc::invalid_argument, "x is " + x.describe() + " but the handle's dispatch had " +
                                     std::to_string(handle.num_tokens()) + " tokens");
  }
  const h::OpSettings settings = impl.handle_settings(handle, options.config);
  if (impl.device_backend) return impl.device_backend->dispatch(x, x_scales, handle, options, settings);
  auto result = std::make_shared<DispatchResult>();
  h::DispatchOutputs outputs = allocate_outputs(*result, handle.recv_rows(), shape, 0);
  if (options.on_allocated) options.on_allocated(*result);
  Event event = impl.queue->submit([&impl, x, x_scales, shape, handle, settings, outputs, result] {
    h::DispatchJob job;
    job.kind = shape.kind;
    job.hidden = shape.hidden;
    job.num_experts = handle.record_->num_experts;
    job.num_tokens = shape.rows;
    job.num_topk = handle.record_->num_topk;
    job.x = static_cast<const std::byte*>(x.data());
    job.x_scales = x_scales.data_as<const float>();
    job.cached = handle.record_.get();
    job.settings = settings;
    job.allocate = [&](std::int64_t) { return outputs; };
    h::DispatchRecord record = impl.engine->dispatch(job);
    impl.publish_traffic();
    // The routing is fixed, so the rows must land exactly where they did the first time.
    if (record.recv_src_rank != handle.record_->recv_src_rank ||
        record.recv_src_token != handle.record_->recv_src_token ||
        record.fwd_token != handle.record_->fwd_token) {
      fail(Errc::internal, "rank " + std::to_string(impl.rank) +
                               ": a cached dispatch placed tokens differently from the dispatch it repeats");
    }
    result->num_recv_tokens = record.num_recv;
    zero_rows_past(*result, record.num_recv);  // a worst-case handle has more rows than tokens
    result->handle = handle;
  });
  return {std::move(event), std::move(result)};
}

Pending<CombineResult> Buffer::combine(const TensorView& y, const Handle& handle,
                                       const CombineOptions& options) {
  Impl& impl = *impl_;
  impl.check_handle(handle);
  RowShape shape = check_combine_rows(y, handle.recv_rows(), impl.config, device());
  const int num_topk = handle.record_ ? handle.record_->num_topk : handle.num_topk_;
  check_combine_options(options, handle.recv_rows(), handle.num_tokens(), num_topk, y, device());
  const h::OpSettings settings = impl.handle_settings(handle, options.config);
  if (impl.device_backend) return impl.device_backend->combine(y, handle, options, settings);
  auto result = std::make_shared<CombineResult>();
  // Combine writes every row of out (zeros, or the bias, for a token that went nowhere).
  result->out = Tensor({handle.num_tokens(), shape.hidden}, y.dtype(), Tensor::Init::uninitialized);
  const bool with_weights = !options.topk_weights.empty();
  if (with_weights) result->topk_weights = Tensor({handle.num_tokens(), num_topk}, DType::fp32);
  if (options.on_allocated) options.on_allocated(*result);
  const TensorView weights = options.topk_weights;
  const TensorView bias = options.bias;
  Event event = impl.queue->submit([&impl, y, weights, bias, shape, handle, settings, with_weights, result] {
    h::CombineJob job;
    job.kind = shape.kind;
    job.hidden = shape.hidden;
    job.y = static_cast<const std::byte*>(y.data());
    job.y_weights = with_weights ? weights.data_as<const float>() : nullptr;
    job.bias = bias.empty() ? nullptr : static_cast<const std::byte*>(bias.data());
    job.out = static_cast<std::byte*>(result->out.data());
    job.out_weights = with_weights ? result->topk_weights.data_as<float>() : nullptr;
    job.record = handle.record_.get();
    job.settings = settings;
    impl.engine->combine(job);
    impl.publish_traffic();
  });
  return {std::move(event), std::move(result)};
}

}  // namespace ferry
