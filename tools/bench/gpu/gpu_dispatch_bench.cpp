// `ferry bench gpu-dispatch`: the CUDA executor's dispatch (fp8) and combine (bf16) on a virtual cluster of
// one GPU, per num_sms, next to the physical bounds measured in the same run: the copy kernel on the same SMs
// and a full-GPU device copy; with --gemm, a cuBLAS GEMM on the SMs communication leaves, alone and while
// dispatch and combine run. Every dispatched row and combined value is checked against the host (the first
// iteration).
//
//   ferry bench gpu-dispatch --nodes 2 --ranks-per-node 2 --tokens 4096 --hidden 7168 --topk 8
//                            --experts 256 --sms 4,8,12,20,24 --gemm --json gpu-dispatch.json
//
// Bandwidth as DeepEP counts it, summed over the virtual ranks: "RDMA" = token rows (fp8 with scales, or
// bf16) sent to other nodes, "NVL" = rows received, divided by the time of one operation. The copy kernel
// bound is bytes read + bytes written; with R virtual ranks of `sms` SMs each, the operation uses R x sms
// SMs, and the bound next to it is the copy kernel on as many.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench/gpu/gpu_bench.hpp"
#include "bench/gpu/gpu_dispatch_bench.hpp"
#include "bench/routing_gen.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/cuda/virtual_cluster.hpp"
#include "ferry/kernels/protocol/numeric.hpp"
#include "ferry/layout.hpp"

namespace ferry::tools {
namespace {

namespace kc = kernels::cuda;
namespace p = kernels::protocol;

void cuda(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    fail(Errc::system, std::string("cuda: ") + what + ": " + cudaGetErrorName(status));
}

// A device buffer that frees itself.
struct Device {
  explicit Device(std::size_t bytes) : bytes(bytes) {
    if (bytes > 0) cuda(cudaMalloc(&data, bytes), "cudaMalloc");
  }
  ~Device() { cudaFree(data); }
  Device(const Device&) = delete;
  Device& operator=(const Device&) = delete;
  template <class T>
  T* as() const {
    return static_cast<T*>(data);
  }
  void* data = nullptr;
  std::size_t bytes = 0;
};

template <class T>
std::unique_ptr<Device> upload(const std::vector<T>& host) {
  auto device = std::make_unique<Device>(host.size() * sizeof(T));
  if (!host.empty())
    cuda(cudaMemcpy(device->data, host.data(), device->bytes, cudaMemcpyHostToDevice), "upload");
  return device;
}

template <class T>
std::vector<T> download(const T* device, std::size_t count) {
  std::vector<T> host(count);
  if (count > 0) cuda(cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost), "download");
  return host;
}

double median(std::vector<double> values) {
  std::sort(values.begin(), values.end());
  return values.empty() ? 0.0 : values[values.size() / 2];
}

// One rank's inputs: fp8 rows (finite codes) with their scales, the routing, the layout; and bf16 results for
// combine, the received rows dequantized exactly.
struct RankInputs {
  bench::Routing routing;
  std::vector<std::uint8_t> x;
  std::vector<float> scales;
  std::vector<std::uint8_t> in_rank;  // the layout, [T, R]
  std::unique_ptr<Device> x_device, scales_device, topk_device, weights_device, in_rank_device;
};

struct Measured {
  int sms = 0;
  double dispatch_ms = 0, dispatch_cached_ms = 0, combine_ms = 0;
  double rdma_bytes = 0, nvl_bytes = 0, combine_rdma_bytes = 0, combine_nvl_bytes = 0;
  double copy_gbps_same_sms = 0;
  bool checked = false;
};

}  // namespace

int run_gpu_dispatch_bench(const GpuDispatchArgs& args) {
  if (const std::string why = kc::gpu_unavailable_reason(); !why.empty()) {
    std::fprintf(stderr, "bench gpu-dispatch: no usable GPU (%s)\n", why.c_str());
    return 1;
  }
  const int R = args.nodes * args.ranks_per_node;
  bench::RoutingSpec spec;
  spec.num_tokens = args.tokens;
  spec.topk = args.topk;
  spec.num_experts = args.experts;
  spec.num_ranks = R;
  spec.local_size = args.ranks_per_node;
  spec.max_nodes = std::min(args.max_nodes, args.nodes);
  spec.seed = args.seed;
  bench::validate(spec);
  const gpu_bench::GpuDescription gpu = gpu_bench::describe_gpu(0);
  const std::int64_t H = args.hidden;
  const std::int64_t blocks = p::scale_blocks(H);
  const std::size_t fp8_row = static_cast<std::size_t>(H) + 4 * blocks;  // DeepEP counts the scales in
  const std::size_t bf16_row = static_cast<std::size_t>(H) * 2;

  std::vector<RankInputs> ranks(R);
  std::mt19937_64 rng(args.seed);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  for (int r = 0; r < R; ++r) {
    RankInputs& in = ranks[r];
    in.routing = bench::generate_routing(spec, r);
    in.x.resize(static_cast<std::size_t>(args.tokens * H));
    for (auto& code : in.x) code = p::float_to_e4m3(value(rng) * 200.0f);
    in.scales.resize(static_cast<std::size_t>(args.tokens * blocks));
    for (float& scale : in.scales) scale = 1.0f / 64.0f * static_cast<float>(1 + rng() % 8);
    const Layout layout =
        compute_layout(TensorView(in.routing.topk_idx.data(), {args.tokens, args.topk}, DType::int64),
                       args.experts, R, args.ranks_per_node, spec.max_nodes);
    in.x_device = upload(in.x);
    in.scales_device = upload(in.scales);
    in.topk_device = upload(in.routing.topk_idx);
    in.weights_device = upload(in.routing.topk_weights);
    in.in_rank = layout.is_token_in_rank;
    in.in_rank_device = upload(layout.is_token_in_rank);
  }
  std::vector<kc::DeviceDispatchInput> inputs(R);
  for (int r = 0; r < R; ++r) {
    inputs[r].x = ranks[r].x_device->as<const std::byte>();
    inputs[r].x_scales = ranks[r].scales_device->as<const float>();
    inputs[r].topk_idx = ranks[r].topk_device->as<const std::int64_t>();
    inputs[r].topk_weights = ranks[r].weights_device->as<const float>();
    inputs[r].in_rank = ranks[r].in_rank_device->as<const std::uint8_t>();
    inputs[r].num_tokens = args.tokens;
  }
  kc::DeviceDispatchShape shape;
  shape.kind = p::PayloadKind::fp8_e4m3;
  shape.hidden = H;
  shape.num_topk = args.topk;
  shape.num_experts = args.experts;
  shape.fingerprint = 0xbe7c;
  kc::DeviceCombineShape combine_shape;
  combine_shape.kind = p::PayloadKind::bf16;
  combine_shape.hidden = H;
  combine_shape.fingerprint = 0xbe7c;

  cudaStream_t stream = nullptr;
  cuda(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  const double full_copy = gpu_bench::measure_device_copy(0, std::size_t{1} << 30, args.iters);
  std::vector<Measured> rows;
  nlohmann::json gemm_json;
  for (int sms : args.sms) {
    Measured m;
    m.sms = sms;
    p::LayoutParams params;
    params.topo = {args.nodes, args.ranks_per_node, sms / 2};
    params.max_hidden = H;
    params.max_topk = args.topk;
    params.rdma_slots = 32;
    params.nvl_slots = 16;
    kc::DeviceOptions options;
    options.timeout = std::chrono::seconds(60);
    kc::VirtualCluster cluster(params, options);
    kc::DeviceEngine& engine = cluster.engine();

    // Combine input: each rank's received rows as bf16 (dequantized), so every result can be checked.
    auto dispatch_once = [&] {
      auto results = engine.dispatch(shape, inputs, nullptr, stream);
      engine.finish(stream, &results);
      return results;
    };
    std::vector<kc::DeviceDispatchResult> results = dispatch_once();
    std::vector<std::unique_ptr<Device>> y(R), out(R);
    std::vector<kc::DeviceCombineInput> combine(R);
    for (int r = 0; r < R; ++r) {
      const std::int64_t received = results[r].num_recv;
      const auto codes = download(reinterpret_cast<const std::uint8_t*>(results[r].recv_x), received * H);
      const auto scales = download(results[r].recv_x_scales, received * blocks);
      std::vector<std::uint16_t> rows_bf16(received * H);
      for (std::int64_t i = 0; i < received * H; ++i) {
        rows_bf16[i] = p::float_to_bf16(p::e4m3_to_float(codes[i]) * scales[i / H * blocks + (i % H) / 128]);
      }
      y[r] = upload(rows_bf16);
      out[r] = std::make_unique<Device>(static_cast<std::size_t>(args.tokens) * bf16_row);
      combine[r].y = y[r]->as<const std::byte>();
      combine[r].out = out[r]->as<std::byte>();
      combine[r].record = results[r].record;
      // DeepEP's counts, per rank: rows received (NVL), and this rank's rows to other nodes (RDMA).
      m.nvl_bytes += static_cast<double>(received) * fp8_row;
      m.combine_nvl_bytes += static_cast<double>(received) * bf16_row;
      for (std::int64_t t = 0; t < args.tokens; ++t) {
        const int nodes = bench::distinct_nodes(spec, &ranks[r].routing.topk_idx[t * args.topk]);
        bool own = false;
        for (int k = 0; k < args.topk; ++k) {
          own |= ranks[r].routing.topk_idx[t * args.topk + k] / spec.experts_per_node() ==
                 r / args.ranks_per_node;
        }
        m.rdma_bytes += static_cast<double>(nodes - (own ? 1 : 0)) * fp8_row;
        m.combine_rdma_bytes += static_cast<double>(nodes - (own ? 1 : 0)) * bf16_row;
      }
    }
    // The check: every rank received each of its tokens' rows intact (the dequantized row of token t is the
    // same wherever it lands), so the combined row is that row summed as ferry sums: per node over the
    // token's ranks there (fp32 from 0, rounded to bf16), then over the nodes in order (fp32 from 0,
    // rounded).
    engine.combine(combine_shape, combine, stream);
    engine.finish(stream);
    std::string mismatch;
    for (int r = 0; r < R && mismatch.empty(); ++r) {
      const auto got = download(out[r]->as<const std::uint16_t>(), static_cast<std::size_t>(args.tokens * H));
      for (std::int64_t t = 0; t < args.tokens && mismatch.empty(); ++t) {
        const std::uint8_t* in_rank = &ranks[r].in_rank[t * R];
        for (std::int64_t h = 0; h < H; ++h) {
          const float row = p::bf16_to_float(p::float_to_bf16(p::e4m3_to_float(ranks[r].x[t * H + h]) *
                                                              ranks[r].scales[t * blocks + h / 128]));
          float total = 0.0f;
          for (int node = 0; node < args.nodes; ++node) {
            float part = 0.0f;
            bool touched = false;
            for (int local = 0; local < args.ranks_per_node; ++local) {
              if (in_rank[node * args.ranks_per_node + local] == 0) continue;
              part += row;
              touched = true;
            }
            if (touched) total += p::bf16_to_float(p::float_to_bf16(part));
          }
          if (got[t * H + h] != p::float_to_bf16(total)) {
            mismatch =
                "rank " + std::to_string(r) + " token " + std::to_string(t) + " element " + std::to_string(h);
            break;
          }
        }
      }
    }
    if (!mismatch.empty())
      fail(Errc::internal, "bench gpu-dispatch: the combined result differs at " + mismatch);
    m.checked = true;

    std::vector<double> dispatch_times, cached_times, combine_times;
    std::vector<std::shared_ptr<kc::DeviceRecord>> records;
    for (const auto& result : results) records.push_back(result.record);
    for (int i = 0; i < args.warmup + args.iters; ++i) {
      auto start = std::chrono::steady_clock::now();
      auto again = engine.dispatch(shape, inputs, nullptr, stream);
      engine.finish(stream, &again);
      const double dispatch_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      start = std::chrono::steady_clock::now();
      auto cached = engine.dispatch(shape, inputs, &records, stream);
      engine.finish(stream, &cached);
      const double cached_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      start = std::chrono::steady_clock::now();
      engine.combine(combine_shape, combine, stream);
      engine.finish(stream);
      const double combine_ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      if (i < args.warmup) continue;
      dispatch_times.push_back(dispatch_ms);
      cached_times.push_back(cached_ms);
      combine_times.push_back(combine_ms);
    }
    m.dispatch_ms = median(dispatch_times);
    m.dispatch_cached_ms = median(cached_times);
    m.combine_ms = median(combine_times);
    m.copy_gbps_same_sms =
        gpu_bench::measure_copy_kernel(0, std::min(R * sms, gpu.sms), std::size_t{1} << 30, args.iters).gbps;

    if (args.gemm && sms == args.gemm_sms) {
      // Dispatch (worst-case sized: no host wait, so it can be enqueued like a kernel) and combine, again and
      // again.
      kc::DeviceDispatchShape worst = shape;
      worst.num_worst_tokens = args.tokens * R;
      auto comm = [&](void* comm_stream) {
        auto sized = engine.dispatch(worst, inputs, nullptr, comm_stream);
        std::vector<kc::DeviceCombineInput> again = combine;
        for (int r = 0; r < R; ++r) again[r].record = sized[r].record;
        engine.combine(combine_shape, again, comm_stream);
      };
      const gpu_bench::GemmResult gemm = gpu_bench::measure_gemm_overlap(0, R * sms, comm);
      engine.release_launches();
      gemm_json = {{"comm_sms", gemm.comm_sms},           {"compute_sms", gemm.compute_sms},
                   {"tflops_full", gemm.tflops_full},     {"tflops_alone", gemm.tflops_alone},
                   {"tflops_loaded", gemm.tflops_loaded}, {"slowdown", gemm.slowdown},
                   {"comm_covered", gemm.comm_covered},   {"mode", gemm.mode}};
    }
    rows.push_back(m);
  }
  cudaStreamDestroy(stream);

  std::printf(
      "ferry bench gpu-dispatch: %s, %d SMs; %d x %d virtual ranks, %lld tokens/rank, hidden %lld, top-%d of "
      "%lld, "
      "fp8 dispatch, bf16 combine; full-GPU device copy %.0f GB/s\n",
      gpu.name.c_str(), gpu.sms, args.nodes, args.ranks_per_node, static_cast<long long>(args.tokens),
      static_cast<long long>(H), args.topk, static_cast<long long>(args.experts), full_copy);
  std::printf("%5s %8s %10s %10s %10s %12s %12s %12s %12s %14s\n", "sms", "SMs used", "disp ms", "cached ms",
              "comb ms", "disp RDMA", "disp NVL", "comb NVL", "NVL/copy", "copy GB/s");
  nlohmann::json json_rows = nlohmann::json::array();
  for (const Measured& m : rows) {
    const double nvl = m.nvl_bytes / (m.dispatch_cached_ms * 1e6);
    const double rdma = m.rdma_bytes / (m.dispatch_cached_ms * 1e6);
    const double combine_nvl = m.combine_nvl_bytes / (m.combine_ms * 1e6);
    std::printf("%5d %8d %10.3f %10.3f %10.3f %10.1f GB/s %7.1f GB/s %7.1f GB/s %11.2f %11.1f GB/s\n", m.sms,
                R * m.sms, m.dispatch_ms, m.dispatch_cached_ms, m.combine_ms, rdma, nvl, combine_nvl,
                m.copy_gbps_same_sms > 0 ? nvl / m.copy_gbps_same_sms : 0.0, m.copy_gbps_same_sms);
    json_rows.push_back({{"sms_per_rank", m.sms},
                         {"sms_used", R * m.sms},
                         {"dispatch_ms", m.dispatch_ms},
                         {"dispatch_cached_ms", m.dispatch_cached_ms},
                         {"combine_ms", m.combine_ms},
                         {"dispatch_rdma_gbps", rdma},
                         {"dispatch_nvl_gbps", nvl},
                         {"combine_rdma_gbps", m.combine_rdma_bytes / (m.combine_ms * 1e6)},
                         {"combine_nvl_gbps", combine_nvl},
                         {"copy_kernel_gbps_same_sms", m.copy_gbps_same_sms}});
  }
  if (!gemm_json.is_null()) {
    std::printf(
        "GEMM on the SMs left (%s): %.1f TFLOP/s alone, %.1f while dispatch+combine run: slowdown %.1f%%\n",
        gemm_json["mode"].get<std::string>().c_str(), gemm_json["tflops_alone"].get<double>(),
        gemm_json["tflops_loaded"].get<double>(), 100 * gemm_json["slowdown"].get<double>());
  }
  if (!args.json.empty()) {
    nlohmann::json report = {{"gpu", gpu.name},
                             {"sms", gpu.sms},
                             {"nodes", args.nodes},
                             {"ranks_per_node", args.ranks_per_node},
                             {"tokens", args.tokens},
                             {"hidden", H},
                             {"topk", args.topk},
                             {"experts", args.experts},
                             {"full_copy_gbps", full_copy},
                             {"rows", json_rows},
                             {"gemm", gemm_json}};
    std::ofstream(args.json) << report.dump(2) << "\n";
  }
  return 0;
}

}  // namespace ferry::tools
