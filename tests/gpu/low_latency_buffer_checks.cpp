#include "low_latency_buffer_checks.hpp"

#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstring>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/low_latency.hpp"

namespace ferry::test {

namespace {

constexpr std::int64_t kTokens = 24, kHidden = 512;
constexpr int kTopk = 4;

void cuda_ok(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    fail(Errc::system, std::string("cuda: ") + what + ": " + cudaGetErrorString(status));
}

// An uninitialized tensor of t's shape and dtype on `device` (the tensors here have 1 to 3 dimensions).
Tensor like(const Tensor& t, Device device) {
  const auto init = Tensor::Init::uninitialized;
  switch (t.dim()) {
    case 1:
      return Tensor({t.size(0)}, t.dtype(), init, device);
    case 2:
      return Tensor({t.size(0), t.size(1)}, t.dtype(), init, device);
    case 3:
      return Tensor({t.size(0), t.size(1), t.size(2)}, t.dtype(), init, device);
    default:
      fail(Errc::invalid_argument, "like(): " + std::to_string(t.dim()) + " dimensions");
  }
}

Tensor upload(const Tensor& host, cudaStream_t stream) {
  Tensor device = like(host, Device::cuda);
  if (host.bytes() > 0) {
    cuda_ok(cudaMemcpyAsync(device.data(), host.data(), host.bytes(), cudaMemcpyHostToDevice, stream),
            "upload");
    cuda_ok(cudaStreamSynchronize(stream), "upload");  // pageable memory: done before `host` can go
  }
  return device;
}

Tensor download(const Tensor& device, cudaStream_t stream) {
  Tensor host = like(device, Device::host);
  if (device.bytes() > 0) {
    cuda_ok(cudaMemcpyAsync(host.data(), device.data(), device.bytes(), cudaMemcpyDeviceToHost, stream),
            "download");
  }
  cuda_ok(cudaStreamSynchronize(stream), "download");
  return host;
}

// Writes `host` into the device tensor `device` (same shape) on `stream`, and waits for it.
void overwrite(const Tensor& device, const Tensor& host, cudaStream_t stream) {
  cuda_ok(cudaMemcpyAsync(device.data(), host.data(), host.bytes(), cudaMemcpyHostToDevice, stream),
          "overwrite");
  cuda_ok(cudaStreamSynchronize(stream), "overwrite");
}

struct Inputs {
  Tensor x, topk_idx, weights, y;  // host
};

// This rank's tokens (some slots -1), and the experts' rows every rank answers with.
Inputs make_inputs(std::uint64_t seed, int rank, std::int64_t experts, std::int64_t local_experts,
                   std::int64_t rows) {
  std::mt19937_64 rng(seed * 1000003 + static_cast<std::uint64_t>(rank));
  Inputs in;
  in.x = Tensor({kTokens, kHidden}, DType::bf16);
  auto* x = in.x.data_as<std::uint16_t>();
  std::uniform_real_distribution<float> value(-2.0f, 2.0f);
  for (std::int64_t i = 0; i < in.x.numel(); ++i) {
    const float f = value(rng);
    std::uint32_t bits = 0;
    std::memcpy(&bits, &f, 4);
    x[i] = static_cast<std::uint16_t>(bits >> 16);
  }
  in.topk_idx = Tensor({kTokens, kTopk}, DType::int64);
  in.weights = Tensor({kTokens, kTopk}, DType::fp32);
  for (std::int64_t t = 0; t < kTokens; ++t) {
    std::vector<std::int64_t> all(static_cast<std::size_t>(experts));
    for (std::int64_t e = 0; e < experts; ++e) all[e] = e;
    std::shuffle(all.begin(), all.end(), rng);
    for (int k = 0; k < kTopk; ++k) {
      const bool unused = (t + k) % 7 == 3;  // a slot that picks no expert
      in.topk_idx.data_as<std::int64_t>()[t * kTopk + k] = unused ? -1 : all[k];
      in.weights.data_as<float>()[t * kTopk + k] = 0.25f + 0.125f * static_cast<float>(k);
    }
  }
  in.y = Tensor({local_experts, rows, kHidden}, DType::bf16);
  auto* y = in.y.data_as<std::uint16_t>();
  for (std::int64_t i = 0; i < in.y.numel(); ++i) {
    const float f = static_cast<float>((i * 7 + rank) % 101) / 64.0f - 0.75f;
    std::uint32_t bits = 0;
    std::memcpy(&bits, &f, 4);
    y[i] = static_cast<std::uint16_t>(bits >> 16);
  }
  return in;
}

// A host tensor of `shape` with every element `value` (int32 or int64).
Tensor filled(std::initializer_list<std::int64_t> shape, DType dtype, std::int64_t value) {
  Tensor t(shape, dtype);
  for (std::int64_t i = 0; i < t.numel(); ++i) {
    if (dtype == DType::int32) {
      t.data_as<std::int32_t>()[i] = static_cast<std::int32_t>(value);
    } else {
      t.data_as<std::int64_t>()[i] = value;
    }
  }
  return t;
}
constexpr std::int32_t kCountBase = 7;
constexpr std::int64_t kWaitBase = 1000;

enum class Mode { plain, hook, async };
const char* name_of(Mode mode) {
  return mode == Mode::plain ? "plain" : mode == Mode::hook ? "hook" : "async";
}

}  // namespace

GpuCheckResult check_low_latency_buffer(Group& group, std::uint64_t seed) {
  int checks = 0;
  int gpus = 0;
  cuda_ok(cudaGetDeviceCount(&gpus), "cudaGetDeviceCount");
  cuda_ok(cudaSetDevice(group.local_rank() % gpus), "cudaSetDevice");  // the buffer's GPU, for the stream
  const int R = group.world_size();
  const std::int64_t experts = 4 * R, local_experts = 4, rows = R * kTokens;
  LowLatencyConfig config;
  config.num_rdma_bytes = get_low_latency_rdma_size_hint(kTokens, kHidden, R, experts);
  config.timeout = std::chrono::seconds(20);
  LowLatencyBuffer host(group, config);
  LowLatencyBuffer gpu(group, config, Device::cuda);
  cudaStream_t stream = nullptr;
  cuda_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "stream");
  const Inputs in = make_inputs(seed, group.rank(), experts, local_experts, rows);
  const Tensor x = upload(in.x, stream), topk = upload(in.topk_idx, stream),
               weights = upload(in.weights, stream), y = upload(in.y, stream);
  std::string failure;
  auto expect = [&](bool ok, const std::string& what) {
    ++checks;
    if (!ok && failure.empty()) failure = "rank " + std::to_string(group.rank()) + ": " + what;
  };

  // A GPU dispatch's results (read back on `on`) against the host buffer's.
  auto compare_dispatch = [&](const std::string& where, bool fp8, const LowLatencyDispatchResult& ref,
                              const LowLatencyDispatchResult& got, cudaStream_t on) {
    const Tensor count = download(got.recv_count, on), recv = download(got.recv_x, on);
    expect(std::memcmp(count.data(), ref.recv_count.data(), count.bytes()) == 0,
           where + "recv_count differs");
    const std::size_t row_bytes = static_cast<std::size_t>(kHidden) * (fp8 ? 1 : 2);
    for (std::int64_t e = 0; e < local_experts; ++e) {
      const std::size_t n = static_cast<std::size_t>(ref.recv_count.data_as<std::int32_t>()[e]);
      const std::size_t first = static_cast<std::size_t>(e * rows) * row_bytes;
      expect(std::memcmp(static_cast<const std::byte*>(recv.data()) + first,
                         static_cast<const std::byte*>(ref.recv_x.data()) + first, n * row_bytes) == 0,
             where + "expert " + std::to_string(e) + "'s rows differ");
      if (fp8) {  // scales are [E/R][blocks or packs][R*T]: the valid rows of each column
        const Tensor scales = download(got.recv_x_scales, on);
        const std::int64_t columns = scales.size(1);
        for (std::int64_t b = 0; b < columns; ++b) {
          const std::size_t at = static_cast<std::size_t>((e * columns + b) * rows) * 4;
          expect(std::memcmp(static_cast<const std::byte*>(scales.data()) + at,
                             static_cast<const std::byte*>(ref.recv_x_scales.data()) + at, n * 4) == 0,
                 where + "expert " + std::to_string(e) + "'s scales differ");
        }
      }
    }
  };
  auto compare_combine = [&](const std::string& where, const LowLatencyCombineResult& ref_back,
                             const Tensor& combined_x, cudaStream_t on) {
    const Tensor combined = download(combined_x, on);
    expect(combined.bytes() == ref_back.combined_x.bytes() &&
               std::memcmp(combined.data(), ref_back.combined_x.data(), combined.bytes()) == 0,
           where + "combined_x differs");
  };
  struct Format {
    const char* name;
    bool fp8, round, ue8m0;
  };
  // One dispatch and combine on both buffers, compared; `together`: every rank takes part (a barrier ends
  // it).
  // `zero_copy`: the combine sends from get_next_low_latency_combine_buffer, filled on the caller's stream.
  auto round = [&](const Format& format, Mode mode, bool together = true, bool zero_copy = false) {
    const std::string where =
        std::string(format.name) + ", " + name_of(mode) + (zero_copy ? ", zero copy" : "") + ": ";
    LowLatencyDispatchOptions d;
    d.use_fp8 = format.fp8;
    d.round_scale = format.round;
    d.use_ue8m0 = format.ue8m0;
    const LowLatencyDispatchResult ref = host.low_latency_dispatch(in.x, in.topk_idx, kTokens, experts, d);
    // The statistics tensors start from non-zero values: each call adds into them.
    const Tensor recv_stats = upload(filled({local_experts}, DType::int32, kCountBase), stream);
    const Tensor dispatch_waits = upload(filled({R}, DType::int64, kWaitBase), stream);
    const Tensor combine_waits = upload(filled({R}, DType::int64, kWaitBase), stream);
    d.cumulative_local_expert_recv_stats = recv_stats;
    d.dispatch_wait_recv_cost_stats = dispatch_waits;
    d.stream = stream;
    d.return_recv_hook = mode == Mode::hook;
    d.async_finish = mode == Mode::async;
    LowLatencyDispatchResult got = gpu.low_latency_dispatch(x, topk, kTokens, experts, d);
    if (mode == Mode::hook) got.hook();
    if (mode == Mode::async) got.event.stream_wait(stream);
    expect(got.recv_x.device() == Device::cuda, where + "recv_x is not a device tensor");
    compare_dispatch(where, format.fp8, ref, got, stream);
    const LowLatencyCombineResult ref_back =
        host.low_latency_combine(in.y, in.topk_idx, in.weights, ref.handle);
    LowLatencyCombineOptions c;
    c.stream = stream;
    c.return_recv_hook = mode == Mode::hook;
    c.async_finish = mode == Mode::async;
    c.combine_wait_recv_cost_stats = combine_waits;
    TensorView rows = y;
    if (zero_copy) {
      const TensorView staging = gpu.get_next_low_latency_combine_buffer(got.handle, stream);
      expect(staging.device() == Device::cuda && staging.bytes() == y.bytes(),
             where + "the staging is " + staging.describe());
      cuda_ok(cudaMemcpyAsync(staging.data(), y.data(), y.bytes(), cudaMemcpyDeviceToDevice, stream),
              "fill the staging");
      rows = staging;
      c.zero_copy = true;
    }
    LowLatencyCombineResult back = gpu.low_latency_combine(rows, topk, weights, got.handle, c);
    if (mode == Mode::hook) back.hook();
    if (mode == Mode::async) back.event.stream_wait(stream);
    compare_combine(where, ref_back, back.combined_x, stream);
    const Tensor counted = download(recv_stats, stream);
    for (std::int64_t e = 0; e < local_experts; ++e) {
      expect(counted.data_as<std::int32_t>()[e] == kCountBase + ref.recv_count.data_as<std::int32_t>()[e],
             where + "cumulative_local_expert_recv_stats[" + std::to_string(e) + "] is " +
                 std::to_string(counted.data_as<std::int32_t>()[e]) + ", not " + std::to_string(kCountBase) +
                 " + recv_count");
    }
    for (const Tensor* waits : {&dispatch_waits, &combine_waits}) {
      const Tensor waited = download(*waits, stream);
      for (int r = 0; r < R; ++r) {
        expect(waited.data_as<std::int64_t>()[r] >= kWaitBase,
               where + "a wait statistic went below its start: " +
                   std::to_string(waited.data_as<std::int64_t>()[r]));
      }
    }
    back.event.wait();  // raises what the kernels recorded
    if (together) group.barrier("gpu-low-latency-round");
  };
  const Format bf16{"bf16", false, false, false};
  for (const Format& format :
       {bf16, Format{"fp8", true, false, false}, Format{"fp8 ue8m0", true, true, true}}) {
    for (const Mode mode : {Mode::plain, Mode::hook, Mode::async})
      round(format, mode, true, mode == Mode::hook);
  }

  const LowLatencyStats stats = gpu.low_latency_stats();
  expect(stats.operations == 18 && stats.local_expert_recv.empty(),
         "low_latency_stats on the GPU: " + std::to_string(stats.operations) +
             " operations (18 issued), per-expert counts should be empty (not gathered)");

  // Refused by name, before anything is sent (the buffer stays usable).
  try {
    gpu.low_latency_dispatch(in.x, in.topk_idx, kTokens, experts, {});
    expect(false, "a host x was accepted");
  } catch (const Error& error) {
    expect(std::string(error.what()).find("runs on the GPU") != std::string::npos,
           std::string("host x refused with: ") + error.what());
  }
  LowLatencyDispatchOptions d;
  d.stream = stream;
  try {
    const Tensor on_host = filled({local_experts}, DType::int32, 0);
    LowLatencyDispatchOptions host_stats = d;
    host_stats.cumulative_local_expert_recv_stats = on_host;
    gpu.low_latency_dispatch(x, topk, kTokens, experts, host_stats);
    expect(false, "a host statistics tensor was accepted");
  } catch (const Error& error) {
    expect(std::string(error.what()).find("cumulative_local_expert_recv_stats") != std::string::npos,
           std::string("a host statistics tensor refused with: ") + error.what());
  }
  // A dispatch and its combine captured into a CUDA graph on a stream of their own, then the graph launched
  // three times: with the inputs, with other inputs written into the same device tensors, with the first
  // again; each launch's results (the tensors the capture returned) equal the host buffer's for those
  // inputs. While the capture is open, what would synchronise the buffer's stream or enqueue from outside
  // the capture is refused by name. Thread-local capture mode: ranks may be threads of this process, whose
  // calls meanwhile a global-mode capture would forbid.
  {
    const Inputs other = make_inputs(seed + 1, group.rank(), experts, local_experts, rows);
    cudaStream_t captured = nullptr;
    cuda_ok(cudaStreamCreateWithFlags(&captured, cudaStreamNonBlocking), "stream");
    LowLatencyDispatchOptions in_capture;
    in_capture.use_fp8 = true;
    in_capture.stream = captured;
    LowLatencyDispatchResult got;
    LowLatencyCombineResult back;
    std::string refused;
    cuda_ok(cudaStreamBeginCapture(captured, cudaStreamCaptureModeThreadLocal), "begin capture");
    try {
      got = gpu.low_latency_dispatch(x, topk, kTokens, experts, in_capture);
      back = gpu.low_latency_combine(y, topk, weights, got.handle, {.stream = captured});
    } catch (const Error& error) {
      refused = error.what();
    }
    auto refused_in_capture = [&](const char* what, auto call) {
      try {
        call();
        expect(false, std::string(what) + " was accepted while the capture was open");
      } catch (const Error& error) {
        expect(std::string(error.what()).find("capture") != std::string::npos,
               std::string(what) + " refused with: " + error.what());
      }
    };
    refused_in_capture("an eager dispatch on another stream",
                       [&] { gpu.low_latency_dispatch(x, topk, kTokens, experts, d); });
    if (R > 1) {
      refused_in_capture("low_latency_update_mask_buffer",
                         [&] { gpu.low_latency_update_mask_buffer((group.rank() + 1) % R, false); });
    }
    refused_in_capture("get_next_low_latency_combine_buffer in the capture",
                       [&] { gpu.get_next_low_latency_combine_buffer(got.handle, captured); });
    refused_in_capture("async_finish in the capture", [&] {
      LowLatencyDispatchOptions async = in_capture;
      async.async_finish = true;
      gpu.low_latency_dispatch(x, topk, kTokens, experts, async);
    });
    cudaGraph_t graph = nullptr;
    const cudaError_t ended = cudaStreamEndCapture(captured, &graph);
    std::unique_ptr<CUgraph_st, decltype(&cudaGraphDestroy)> graph_owner(graph, cudaGraphDestroy);
    expect(refused.empty(), "a captured dispatch and combine were refused: " + refused);
    expect(ended == cudaSuccess && graph != nullptr,
           std::string("cudaStreamEndCapture: ") + cudaGetErrorString(ended));
    if (refused.empty() && ended == cudaSuccess && graph != nullptr) {
      cudaGraphExec_t exec = nullptr;
      cuda_ok(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
      std::unique_ptr<CUgraphExec_st, decltype(&cudaGraphExecDestroy)> exec_owner(exec, cudaGraphExecDestroy);
      for (int launch = 0; launch < 3; ++launch) {
        const Inputs& now = launch == 1 ? other : in;
        overwrite(x, now.x, captured);
        overwrite(topk, now.topk_idx, captured);
        overwrite(weights, now.weights, captured);
        overwrite(y, now.y, captured);
        LowLatencyDispatchOptions h;
        h.use_fp8 = true;
        const LowLatencyDispatchResult ref =
            host.low_latency_dispatch(now.x, now.topk_idx, kTokens, experts, h);
        const LowLatencyCombineResult ref_back =
            host.low_latency_combine(now.y, now.topk_idx, now.weights, ref.handle);
        cuda_ok(cudaGraphLaunch(exec, captured), "cudaGraphLaunch");
        const std::string where = "graph launch " + std::to_string(launch) + ": ";
        compare_dispatch(where, true, ref, got, captured);
        compare_combine(where, ref_back, back.combined_x, captured);
      }
      // The buffer goes on with plain calls (the inputs as they were).
      overwrite(x, in.x, stream);
      overwrite(topk, in.topk_idx, stream);
      overwrite(weights, in.weights, stream);
      overwrite(y, in.y, stream);
    }
    cuda_ok(cudaStreamDestroy(captured), "stream");
    group.barrier("gpu-low-latency-graph");
    round(Format{"fp8 after a graph", true, false, false}, Mode::plain);
    // Zero copy after a capture is refused until a clean (a launch numbers operations on the GPU alone).
    LowLatencyDispatchResult sent = gpu.low_latency_dispatch(x, topk, kTokens, experts, d);
    try {
      gpu.get_next_low_latency_combine_buffer(sent.handle, stream);
      expect(false, "zero copy after a capture was accepted before a clean");
    } catch (const Error& error) {
      expect(std::string(error.what()).find("clean_low_latency_buffer") != std::string::npos,
             std::string("zero copy after a capture refused with: ") + error.what());
    }
    gpu.low_latency_combine(y, topk, weights, sent.handle, {.stream = stream}).event.wait();
    group.barrier("gpu-low-latency-after-graph");
    gpu.clean_low_latency_buffer(kTokens, kHidden, experts);
    host.clean_low_latency_buffer(kTokens, kHidden, experts);
    round(bf16, Mode::plain, true, true);
  }

  // A bad expert id on rank 0: its kernels leave the row out and record it, the call's event raises it by
  // name, every later call fails until a clean (collective), and after the clean a round matches again.
  {
    Tensor bad = upload(in.topk_idx, stream);
    if (group.rank() == 0) {
      const std::int64_t id = experts + 5;
      cuda_ok(cudaMemcpyAsync(bad.data(), &id, sizeof id, cudaMemcpyHostToDevice, stream), "bad id");
      cuda_ok(cudaStreamSynchronize(stream), "bad id");
    }
    LowLatencyDispatchResult sent = gpu.low_latency_dispatch(x, bad, kTokens, experts, d);
    try {
      sent.event.wait();
      expect(group.rank() != 0, "a bad expert id was not reported");
    } catch (const Error& error) {
      expect(group.rank() == 0 && std::string(error.what()).find("names expert") != std::string::npos,
             std::string("the bad expert id reported as: ") + error.what());
    }
    if (group.rank() == 0) {
      try {
        gpu.low_latency_dispatch(x, topk, kTokens, experts, d);
        expect(false, "a call after a recorded failure was accepted");
      } catch (const Error&) {
      }
    }
    group.barrier("gpu-low-latency-bad-id");
    gpu.clean_low_latency_buffer(kTokens, kHidden, experts);
    host.clean_low_latency_buffer(kTokens, kHidden, experts);
    round(bf16, Mode::plain);
  }

  // The mask: masked by this rank, then cleared.
  if (R > 1) {
    const int other = (group.rank() + 1) % R;
    Tensor status({R}, DType::int32);
    gpu.low_latency_update_mask_buffer(other, true);
    gpu.low_latency_query_mask_buffer(status);
    expect(status.data_as<std::int32_t>()[other] == 1 && status.data_as<std::int32_t>()[group.rank()] == 0,
           "the mask does not say the masked rank");
    gpu.low_latency_clean_mask_buffer();
    gpu.low_latency_query_mask_buffer(status);
    expect(status.data_as<std::int32_t>()[other] == 0, "the cleaned mask still says the rank");

    // A masked round: every rank but the last masks the last, which sits it out; both executors leave its
    // rows and sums out alike. Then the masks are cleared, both buffers cleaned, and everyone takes part.
    const int victim = R - 1;
    if (group.rank() != victim) {
      gpu.low_latency_update_mask_buffer(victim, true);
      host.low_latency_update_mask_buffer(victim, true);
      round(bf16, Mode::plain, false);
    }
    group.barrier("gpu-low-latency-masked");
    gpu.low_latency_clean_mask_buffer();
    host.low_latency_clean_mask_buffer();
    gpu.clean_low_latency_buffer(kTokens, kHidden, experts);
    host.clean_low_latency_buffer(kTokens, kHidden, experts);
    round(bf16, Mode::plain);
  }
  group.barrier("gpu-low-latency-end");
  cuda_ok(cudaStreamDestroy(stream), "stream");
  return {failure, checks};
}

}  // namespace ferry::test
