#include "buffer_checks.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <optional>
#include <random>
#include <vector>

#include "dispatch/cluster_run.hpp"
#include "dispatch/reference.hpp"
#include "ferry/buffer.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/protocol/numeric.hpp"
#include "ferry/layout.hpp"
#include "owned_stream.hpp"

namespace ferry::test {

namespace {

namespace p = kernels::protocol;

void cuda_check(cudaError_t status, const std::string& what) {
  if (status != cudaSuccess) {
    fail(Errc::system,
         "cuda: " + what + ": " + cudaGetErrorName(status) + " (" + cudaGetErrorString(status) + ")");
  }
}

// A [rows, cols] device tensor holding `bytes` (copied on `stream` when given, else synchronously).
Tensor upload(const void* bytes, std::int64_t rows, std::int64_t cols, DType dtype,
              cudaStream_t stream = nullptr) {
  Tensor tensor({rows, cols}, dtype, Tensor::Init::uninitialized, Device::cuda);
  if (tensor.bytes() == 0) return tensor;
  if (stream != nullptr) {
    cuda_check(cudaMemcpyAsync(tensor.data(), bytes, tensor.bytes(), cudaMemcpyHostToDevice, stream),
               "upload on the caller's stream");
  } else {
    // cudaMemcpy from pageable memory may return before its DMA lands, and get_layout follows no stream.
    cuda_check(cudaMemcpy(tensor.data(), bytes, tensor.bytes(), cudaMemcpyHostToDevice), "upload");
    cuda_check(cudaStreamSynchronize(nullptr), "upload");
  }
  return tensor;
}

// A host copy of a [rows, cols] device tensor (an empty tensor stays empty).
Tensor to_host(const Tensor& device, cudaStream_t stream = nullptr) {
  if (device.dim() != 2) return {};
  Tensor host({device.size(0), device.size(1)}, device.dtype(), Tensor::Init::uninitialized);
  if (host.bytes() == 0) return host;
  if (stream != nullptr) {
    cuda_check(cudaMemcpyAsync(host.data(), device.data(), host.bytes(), cudaMemcpyDeviceToHost, stream),
               "download on the caller's stream");
    cuda_check(cudaStreamSynchronize(stream), "the caller's stream");
  } else {
    cuda_check(cudaMemcpy(host.data(), device.data(), host.bytes(), cudaMemcpyDeviceToHost), "download");
  }
  return host;
}

// The dispatch result with its tensors copied to the host, for the host checks (cluster_run.hpp).
DispatchResult host_copy(const DispatchResult& got, cudaStream_t stream = nullptr) {
  DispatchResult host;
  host.recv_x = to_host(got.recv_x, stream);
  host.recv_x_scales = to_host(got.recv_x_scales, stream);
  host.recv_topk_idx = to_host(got.recv_topk_idx, stream);
  host.recv_topk_weights = to_host(got.recv_topk_weights, stream);
  host.tokens_per_local_expert = got.tokens_per_local_expert;
  host.num_recv_tokens = got.num_recv_tokens;
  host.handle = got.handle;
  return host;
}

// One rank's inputs of a scenario on the device.
struct DeviceInputs {
  Tensor x, scales, topk, weights;
  DispatchInputs view() const { return {x, scales, topk, weights}; }
};

DeviceInputs upload_inputs(const Scenario& scenario, int rank, cudaStream_t stream = nullptr) {
  const RankData& data = scenario.ranks[rank];
  const std::int64_t T = data.num_tokens;
  DeviceInputs inputs;
  inputs.x = upload(data.x.data(), T, scenario.hidden, scenario.dtype, stream);
  if (scenario.dtype == DType::fp8_e4m3)
    inputs.scales = upload(data.scales.data(), T, scenario.scale_blocks(), DType::fp32, stream);
  inputs.topk = upload(data.topk.data(), T, scenario.num_topk, DType::int64, stream);
  inputs.weights = upload(data.weights.data(), T, scenario.num_topk, DType::fp32, stream);
  return inputs;
}

// What rank r receives as topk weights ([received, K]): the source's weight where the expert is r's, else 0.
std::vector<float> received_weights(const Scenario& scenario, const std::vector<Source>& sources, int r) {
  const int K = scenario.num_topk;
  std::vector<float> weights(sources.size() * K, 0.0f);
  for (std::size_t i = 0; i < sources.size(); ++i) {
    const RankData& data = scenario.ranks[sources[i].rank];
    for (int k = 0; k < K; ++k) {
      const std::int64_t expert = data.topk[sources[i].token * K + k];
      if (expert >= 0 && scenario.rank_of_expert(expert) == r)
        weights[i * K + k] = data.weights[sources[i].token * K + k];
    }
  }
  return weights;
}

std::string layout_difference(const Layout& device, const Layout& host) {
  if (!device.on_device()) return "get_layout on a device topk_idx returned a host layout";
  if (device.tokens_per_rank != host.tokens_per_rank) return "tokens_per_rank differs from compute_layout";
  if (device.tokens_per_node != host.tokens_per_node) return "tokens_per_node differs from compute_layout";
  if (device.tokens_per_expert != host.tokens_per_expert)
    return "tokens_per_expert differs from compute_layout";
  std::vector<std::uint8_t> in_rank(host.is_token_in_rank.size());
  if (!in_rank.empty()) {
    cuda_check(cudaMemcpy(in_rank.data(), device.is_token_in_rank_device.data(), in_rank.size(),
                          cudaMemcpyDeviceToHost),
               "is_token_in_rank_device");
  }
  if (in_rank != host.is_token_in_rank) return "is_token_in_rank_device differs from compute_layout";
  return "";
}

struct Round {
  DType dtype = DType::bf16;
  bool worst = false;        // worst-case sizing (num_worst_tokens = the most any rank receives + 3)
  bool overflow = false;     // num_worst_tokens one short of the most any rank receives
  bool user_stream = false;  // inputs uploaded, the layout computed and results read on the caller's stream
  int alignment = 1;
  bool cached_early = false;  // the cached dispatch issued from on_allocated's handle, before the first waits
};

class Checker {
 public:
  Checker(Group& group, std::uint64_t seed) : group_(group), rank_(group.rank()), rng_(seed) {
    config_.num_sms = 4;
    config_.max_hidden = 2048;
    config_.max_topk = 8;
    config_.rdma_ring_slots = 4;
    config_.rdma_chunk = 2;
    config_.nvl_ring_slots = 4;
    config_.nvl_chunk = 2;
    config_.max_nodes = std::min(group.num_nodes(), 4);
    config_.timeout = std::chrono::seconds(10);  // a failure ends the run in well under a minute
  }

  GpuCheckResult run() {
    // One caller stream for every round, made before the Buffer (so it outlives every result whose memory
    // was used on it): CUDA maps streams onto its hardware queues round robin in the order they are made, so
    // a fresh stream per round would soon share a queue with the other rank thread's Buffer stream, whose
    // cross-rank kernel could then wait behind this rank's stream waits.
    caller_stream_.emplace(cudaStreamNonBlocking);
    Buffer buffer(group_, config_, Device::cuda);
    const Round rounds[] = {
        {DType::bf16, false, false, true, 1, false},
        {DType::fp8_e4m3, false, false, false, 1, false},
        {DType::fp32, true, false, false, 4, true},
        {DType::bf16, false, true, false, 1, false},
    };
    for (int round = 0; round < static_cast<int>(std::size(rounds)); ++round) {
      round_ = round;
      run_round(buffer, rounds[round]);
      // Every rank past its round before any drops the round's tensors: ranks that are threads of one
      // process share the GPU, and nothing one frees may race the other's operations.
      group_.barrier("gpu-buffer-checks/round-end");
    }
    check_refusals(buffer);
    return result_;
  }

 private:
  void note(const std::string& diff, const std::string& what) {
    ++result_.checks;
    if (diff.empty() || !result_.failure.empty()) return;
    result_.failure =
        "rank " + std::to_string(rank_) + " round " + std::to_string(round_) + " " + what + ": " + diff;
  }

  Scenario draw_scenario(DType dtype) {
    ScenarioShape shape;
    shape.num_nodes = group_.num_nodes();
    shape.local_size = group_.local_size();
    shape.experts_per_rank = 4;
    const int experts = shape.experts_per_rank * group_.world_size();
    shape.num_topk = 1 + static_cast<int>(rng_() % std::min(8, experts));
    const std::int64_t hiddens[] = {256, 1000, 2048};  // 1000: a partial fp8 scale block
    shape.hidden = hiddens[rng_() % 3];
    shape.dtype = dtype;
    shape.max_tokens = 64;
    shape.max_nodes = config_.max_nodes;
    return make_scenario(shape, rng_);
  }

  void run_round(Buffer& buffer, const Round& how) {
    const cudaStream_t user = how.user_stream ? caller_stream_->get() : nullptr;
    Scenario scenario = draw_scenario(how.dtype);
    const auto sources = expected_sources(scenario);
    std::int64_t most = 0;
    for (const auto& rows : sources)
      most = std::max<std::int64_t>(most, static_cast<std::int64_t>(rows.size()));
    const std::int64_t received = static_cast<std::int64_t>(sources[rank_].size());
    // Everything random is drawn before any call, the same on every rank.
    Scenario renewed = scenario;
    fill_rows(renewed, rng_);
    const std::int64_t worst = how.overflow ? most - 1 : (how.worst ? most + 3 : 0);
    const auto results = make_results(scenario, sources, combine_type(how.dtype), worst, rng_);
    const auto bias = make_bias(scenario, combine_type(how.dtype));
    if (how.overflow && worst < 1) return;  // nothing to overflow: every rank skips alike

    const DeviceInputs inputs = upload_inputs(scenario, rank_, user);
    const RankData& data = scenario.ranks[rank_];
    const Layout host_layout =
        compute_layout(TensorView(data.topk.data(), {data.num_tokens, scenario.num_topk}, DType::int64),
                       scenario.num_experts, group_.world_size(), group_.local_size(), config_.max_nodes);
    // On the caller's stream, the upload of topk_idx still in flight: the layout follows that stream.
    const Layout layout = buffer.get_layout(inputs.topk, scenario.num_experts, user);
    note(layout_difference(layout, host_layout), "device layout");

    DispatchOptions options;
    options.num_worst_tokens = worst;
    options.expert_alignment = how.alignment;
    options.stream = user;
    std::optional<Handle> early_handle;  // as on_allocated hands it out, before the dispatch has run
    options.on_allocated = [&early_handle](const DispatchResult& allocated) {
      early_handle = allocated.handle;
    };
    auto pending = buffer.dispatch(inputs.view(), layout, options);
    if (how.overflow) {
      check_overflow(pending, received, worst);
      if (received > worst) refuse_overflowed_handle(buffer, early_handle, worst, scenario.hidden);
      dispatch_after_overflow(buffer, scenario, sources);
      return;
    }
    // topk_idx and the layout are taken at the call: the caller's stream waits for their copies, so work
    // enqueued there now may change them (the results below must not see it).
    if (inputs.topk.bytes() > 0) {
      cuda_check(cudaMemsetAsync(inputs.topk.data(), 0x7f, inputs.topk.bytes(), user), "rewrite topk_idx");
    }
    if (layout.is_token_in_rank_device.bytes() > 0) {
      cuda_check(cudaMemsetAsync(layout.is_token_in_rank_device.data(), 0,
                                 layout.is_token_in_rank_device.bytes(), user),
                 "clear the layout");
    }
    // A cached dispatch from that handle, issued before the first dispatch is waited for: its rows and
    // num_recv_tokens must not depend on the wait.
    DeviceInputs fresh;
    std::optional<Pending<DispatchResult>> early;
    if (how.cached_early) {
      fresh = upload_inputs(renewed, rank_);
      if (!early_handle) {
        note("on_allocated was not called", "cached dispatch before the wait");
      } else {
        early = buffer.dispatch(fresh.x, fresh.scales, *early_handle);
      }
    }
    // On the caller's stream: it waits for the dispatch (Event::stream_wait) and the results are read on it.
    // (The public API hands out the result tensors only through wait(), so the host waits first anyway.)
    if (user != nullptr) pending.event().stream_wait(user);
    const DispatchResult& got = pending.wait();
    const DispatchResult host = host_copy(got, user);
    DispatchCheck check;
    check.worst_rows = worst;
    check.expert_alignment = how.alignment;
    check.with_records = false;  // a CUDA handle keeps its records on the GPU
    note(check_dispatch_rank(scenario, sources[rank_], rank_, host, check), "dispatch");

    // A cached dispatch of new rows from new memory; the first call's x poisoned (the early one, if any, was
    // issued with the new rows already).
    if (!how.cached_early) fresh = upload_inputs(renewed, rank_);
    if (inputs.x.bytes() > 0)
      cuda_check(cudaMemset(inputs.x.data(), 0x5a, inputs.x.bytes()), "poison the old x");
    if (inputs.scales.bytes() > 0)
      cuda_check(cudaMemset(inputs.scales.data(), 0x5a, inputs.scales.bytes()), "poison the old scales");
    if (!early) early = buffer.dispatch(fresh.x, fresh.scales, got.handle);
    DispatchCheck cached = check;
    cached.with_topk = false;
    note(check_dispatch_rank(renewed, sources[rank_], rank_, host_copy(early->wait()), cached),
         how.cached_early ? "cached dispatch issued before the first was waited for"
                          : "cached dispatch of new rows");

    // Combine the rows every rank returns, with the received weights and a bias.
    const DType type = combine_type(how.dtype);
    const Tensor y = upload(results[rank_].data(), got.handle.recv_rows(), scenario.hidden, type);
    const Tensor bias_device = upload(bias[rank_].data(), data.num_tokens, scenario.hidden, type);
    CombineOptions combine_options;
    combine_options.topk_weights = got.recv_topk_weights;
    combine_options.bias = bias_device;
    CombineResult& combined = buffer.combine(y, got.handle, combine_options).wait();
    const auto expected = expected_combine(scenario, sources, results, type, &bias);
    note(check_combine_rank(scenario, expected[rank_], rank_, to_host(combined.out)), "combine");
    std::vector<std::vector<float>> weights(scenario.num_ranks());
    for (int r = 0; r < scenario.num_ranks(); ++r) weights[r] = received_weights(scenario, sources[r], r);
    const auto expected_weights = expected_combined_weights(scenario, sources, weights);
    const Tensor got_weights = to_host(combined.topk_weights);
    note(got_weights.bytes() == expected_weights[rank_].size() * sizeof(float) &&
                 (got_weights.bytes() == 0 ||
                  std::memcmp(got_weights.data(), expected_weights[rank_].data(), got_weights.bytes()) == 0)
             ? ""
             : "combined topk weights differ from the reference",
         "combine weights");
  }

  // The fullest rank's dispatch fails naming the counts; the others succeed.
  void check_overflow(Pending<DispatchResult>& pending, std::int64_t received, std::int64_t worst) {
    std::string error;
    try {
      pending.wait();
    } catch (const Error& e) {
      error = e.what();
      note(e.code() == Errc::invalid_argument ? "" : "the overflow is not invalid_argument: " + error,
           "overflow");
    }
    if (received > worst) {
      note(error.find("num_worst_tokens is " + std::to_string(worst)) != std::string::npos
               ? ""
               : "receiving " + std::to_string(received) + " rows into " + std::to_string(worst) +
                     " gave: " + (error.empty() ? "no error" : error),
           "overflow");
    } else {
      note(error.empty() ? "" : "a rank within num_worst_tokens failed: " + error, "overflow");
    }
  }

  // The overflowed dispatch's handle (as on_allocated handed it out, before the overflow was known) is
  // refused by combine by name once the dispatch has failed: it recorded fewer rows than its counts say.
  void refuse_overflowed_handle(Buffer& buffer, const std::optional<Handle>& handle, std::int64_t worst,
                                std::int64_t hidden) {
    if (!handle) {
      note("on_allocated was not called", "combine on an overflowed handle");
      return;
    }
    std::vector<std::uint16_t> zeros(static_cast<std::size_t>(worst * hidden), 0);
    const Tensor y = upload(zeros.data(), worst, hidden, DType::bf16);
    std::string error;
    try {
      buffer.combine(y, *handle);
    } catch (const Error& e) {
      error = e.what();
    }
    note(error.find("neither combined nor repeated") != std::string::npos
             ? ""
             : "combine on an overflowed handle gave: " + (error.empty() ? std::string("no error") : error),
         "combine on an overflowed handle");
  }

  // After an overflow the Buffer stays usable: the same routing dispatched again, unsized, is checked.
  void dispatch_after_overflow(Buffer& buffer, const Scenario& scenario,
                               const std::vector<std::vector<Source>>& sources) {
    const DeviceInputs inputs = upload_inputs(scenario, rank_);
    const Layout layout = buffer.get_layout(inputs.topk, scenario.num_experts);
    DispatchCheck check;
    check.with_records = false;
    note(check_dispatch_rank(scenario, sources[rank_], rank_,
                             host_copy(buffer.dispatch(inputs.view(), layout).wait()), check),
         "dispatch after an overflow");
  }

  // Host tensors are refused by name, before anything runs (no collective is entered).
  void check_refusals(Buffer& buffer) {
    round_ = -1;
    std::vector<std::int64_t> topk = {0, -1};
    std::vector<std::uint16_t> x(4, 0);
    std::vector<float> weights = {1.0f, 0.0f};
    const Tensor topk_device = upload(topk.data(), 1, 2, DType::int64);
    const Layout layout = buffer.get_layout(topk_device, 4 * group_.world_size());
    DispatchInputs host_x{TensorView(x.data(), {1, 4}, DType::bf16),
                          {},
                          topk_device,
                          upload(weights.data(), 1, 2, DType::fp32)};
    std::string message;
    try {
      buffer.dispatch(host_x, layout);
    } catch (const Error& e) {
      message = e.what();
    }
    note(message.find("x is") != std::string::npos && message.find("device tensors") != std::string::npos
             ? ""
             : "a host x gave: " + (message.empty() ? std::string("no error") : message),
         "host tensor refused");

    // A CUDA graph capture on the caller's stream is refused by name, before anything is enqueued: the
    // capture stays valid and the Buffer usable (no collective is entered).
    const OwnedStream capturing(cudaStreamNonBlocking);
    const Tensor x_device = upload(x.data(), 1, 4, DType::bf16);  // before the capture: uploads synchronise
    const Tensor weights_device = upload(weights.data(), 1, 2, DType::fp32);
    cuda_check(cudaStreamBeginCapture(capturing.get(), cudaStreamCaptureModeGlobal),
               "cudaStreamBeginCapture");
    DispatchOptions captured;
    captured.stream = capturing.get();
    std::string refusal;
    try {
      buffer.dispatch(DispatchInputs{x_device, {}, topk_device, weights_device}, layout, captured);
    } catch (const Error& e) {
      refusal = std::string(e.what()) + (e.code() == Errc::unsupported ? "" : " (not Errc::unsupported)");
    }
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(capturing.get(), &graph);
    if (graph != nullptr) cudaGraphDestroy(graph);
    note(refusal.find("captured into a CUDA graph") != std::string::npos &&
                 refusal.find("not Errc") == std::string::npos && ended == cudaSuccess
             ? ""
             : "a dispatch on a captured stream gave: " +
                   (refusal.empty() ? std::string("no error") : refusal) +
                   ", and ending the capture: " + cudaGetErrorName(ended),
         "capture refused");
  }

  static DType combine_type(DType dispatched) {
    return dispatched == DType::fp32 ? DType::fp32 : DType::bf16;
  }

  std::vector<std::vector<std::uint8_t>> make_bias(const Scenario& scenario, DType type) {
    std::uniform_real_distribution<float> value(-2.0f, 2.0f);
    const p::PayloadKind kind = type == DType::fp32 ? p::PayloadKind::fp32 : p::PayloadKind::bf16;
    std::vector<std::vector<std::uint8_t>> bias(scenario.num_ranks());
    for (int r = 0; r < scenario.num_ranks(); ++r) {
      const std::int64_t elements = scenario.ranks[r].num_tokens * scenario.hidden;
      bias[r].resize(elements * element_size(type));
      for (std::int64_t i = 0; i < elements; ++i) p::store_element(kind, bias[r].data(), i, value(rng_));
    }
    return bias;
  }

  Group& group_;
  const int rank_;
  std::mt19937_64 rng_;
  Config config_;
  std::optional<OwnedStream> caller_stream_;
  int round_ = 0;
  GpuCheckResult result_;
};

}  // namespace

GpuCheckResult check_cuda_buffer(Group& group, std::uint64_t seed) {
  return Checker(group, seed).run();  // the Buffer selects this thread's GPU before anything is uploaded
}

}  // namespace ferry::test
