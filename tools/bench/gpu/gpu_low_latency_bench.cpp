// `ferry bench gpu-low-latency`: the low-latency mode's CUDA executor (kernels/cuda/low_latency_engine) on a
// virtual cluster of one GPU: every virtual rank's dispatch (send and receive halves), then combine, each
// captured once as a CUDA graph and replayed, timed with CUDA events around the replay. The virtual ranks'
// kernels run one after another on the one stream (no phase of a send half waits for a peer), so an
// operation's time is the sum over the ranks; the report gives it and its share per rank (/ R), which is a
// rank's time alone on the GPU, not the time of R ranks on R GPUs at once. The copy kernel on as many SMs as
// one rank's bulk phases use, and a full-GPU device copy, are the bounds. The per-expert counts are checked
// against the routing after the first round and after the timed ones.
//
//   ferry bench gpu-low-latency --nodes 2 --ranks-per-node 4 --tokens 128 --hidden 7168 --topk 8 --experts
//   256
//
// Bytes as DeepEP counts its low-latency figures, summed over the virtual ranks: one message per (token,
// expert) (fp8 with its scales and header, or bf16) in dispatch, one bf16 row per (token, expert) back in
// combine.
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "bench/gpu/gpu_bench.hpp"
#include "bench/gpu/gpu_low_latency_bench.hpp"
#include "bench/gpu/gpu_support.hpp"
#include "bench/percentile.hpp"
#include "bench/routing_gen.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/cuda/device_engine.hpp"
#include "ferry/kernels/cuda/low_latency_engine.hpp"
#include "ferry/kernels/protocol/numeric.hpp"

namespace ferry::tools {
namespace {

namespace kc = kernels::cuda;
namespace p = kernels::protocol;

using gpu_bench::detail::check_cuda;

// Device memory, zeroed or filled from the host.
std::unique_ptr<gpu_bench::detail::DeviceMemory> device_bytes(std::size_t bytes, const void* init) {
  auto memory =
      std::make_unique<gpu_bench::detail::DeviceMemory>(std::max<std::size_t>(bytes, 16), "gpu-low-latency");
  if (init != nullptr && bytes > 0) {
    check_cuda(cudaMemcpy(memory->get(), init, bytes, cudaMemcpyHostToDevice), "upload");
  } else {
    check_cuda(cudaMemset(memory->get(), 0, memory->bytes()), "cudaMemset");
  }
  return memory;
}

struct RankArrays {
  std::vector<std::unique_ptr<gpu_bench::detail::DeviceMemory>> owned;
  p::LowLatencyDispatchPlan dispatch;
  p::LowLatencyCombinePlan combine;
  std::vector<std::int32_t> expected_count;  // [E/R] rows every source sends to each local expert

  template <class T>
  T* add(std::size_t count, const void* init = nullptr) {
    owned.push_back(device_bytes(count * sizeof(T), init));
    return static_cast<T*>(owned.back()->get());
  }
};

}  // namespace

int run_gpu_low_latency_bench(const GpuLowLatencyArgs& args) {
  if (const std::string why = kc::gpu_unavailable_reason(); !why.empty()) {
    std::fprintf(stderr, "bench gpu-low-latency: no usable GPU (%s)\n", why.c_str());
    return 1;
  }
  const int R = args.nodes * args.ranks_per_node;
  if (args.experts % R != 0) {
    fail(Errc::invalid_argument, "--experts " + std::to_string(args.experts) + " is not a multiple of the " +
                                     std::to_string(R) + " ranks");
  }
  const std::int64_t T = args.tokens, H = args.hidden, E = args.experts, L = E / R, rows = R * T;
  const int K = args.topk;
  if (args.topk > p::kLowLatencyMaxTopk) {
    fail(Errc::invalid_argument, "--topk " + std::to_string(args.topk) +
                                     ": the low-latency mode takes at most " +
                                     std::to_string(p::kLowLatencyMaxTopk));
  }
  if (H % 8 != 0) fail(Errc::invalid_argument, "--hidden must be a multiple of 8 (16-byte rows)");
  const bool fp8 = !args.bf16;
  if (fp8 && H % p::kFp8BlockSize != 0)
    fail(Errc::invalid_argument, "--hidden must be a multiple of 128 for fp8 (or pass --bf16)");
  const std::int64_t blocks = p::scale_blocks(H);
  const p::LowLatencyShape shape{T, H, R, E};
  const p::LowLatencyLayout layout = p::make_low_latency_layout(shape);
  bench::RoutingSpec spec;
  spec.num_tokens = T;
  spec.topk = K;
  spec.num_experts = E;
  spec.num_ranks = R;
  spec.local_size = args.ranks_per_node;
  spec.max_nodes = args.nodes;
  spec.seed = args.seed;
  bench::validate(spec);
  const gpu_bench::GpuDescription gpu = gpu_bench::describe_gpu(0);

  kc::LowLatencyDeviceOptions options;
  options.blocks_per_rank = args.blocks_per_rank;
  options.timeout = std::chrono::seconds(10);  // within gpu-check's step limit, with its diagnosis
  kc::LowLatencyVirtualCluster cluster(args.nodes, args.ranks_per_node, layout.total_bytes, options);
  kc::LowLatencyDeviceEngine& engine = cluster.engine();

  std::mt19937_64 rng(args.seed);
  std::uniform_real_distribution<float> value(-1.0f, 1.0f);
  std::vector<RankArrays> ranks(R);
  for (RankArrays& a : ranks) a.expected_count.assign(static_cast<std::size_t>(L), 0);
  double dispatch_bytes = 0, combine_bytes = 0;
  for (int r = 0; r < R; ++r) {
    RankArrays& a = ranks[r];
    const bench::Routing routing = bench::generate_routing(spec, r);
    std::vector<std::uint16_t> x(static_cast<std::size_t>(T * H));
    for (auto& v : x) v = p::float_to_bf16(value(rng));
    // Its messages, and what every local expert must receive: the (token, expert) pairs naming it.
    for (std::int64_t slot = 0; slot < T * K; ++slot) {
      const std::int64_t expert = routing.topk_idx[slot];
      if (expert < 0) continue;
      dispatch_bytes += static_cast<double>(p::low_latency_message(fp8, H).stride);
      combine_bytes += static_cast<double>(H) * 2;
      ranks[expert / L].expected_count[expert % L] += 1;
    }
    const std::vector<std::uint64_t> mask(R, 0);
    p::LowLatencyDispatchPlan& d = a.dispatch;
    d.ctx.layout = layout;
    d.ctx.topo.num_nodes = args.nodes;
    d.ctx.topo.local_size = args.ranks_per_node;
    d.ctx.rank = r;
    d.ctx.mask_after_ns = 2'000'000'000ull;  // a rank masked shows in the counts checked at the end
    d.ctx.mask = a.add<std::uint64_t>(R, mask.data());
    d.message = p::low_latency_message(fp8, H);
    d.shape_check = p::low_latency_shape_check(shape, fp8);
    d.x = a.add<std::uint16_t>(x.size(), x.data());
    d.topk_idx = a.add<std::int64_t>(routing.topk_idx.size(), routing.topk_idx.data());
    d.num_tokens = T;
    d.num_topk = K;
    d.slot = a.add<std::int32_t>(static_cast<std::size_t>(T * K));  // computed by the GPU
    d.send_count = a.add<std::int32_t>(static_cast<std::size_t>(E));
    d.recv_x = a.add<std::byte>(static_cast<std::size_t>(L * rows * H) * (fp8 ? 1 : 2));
    if (fp8) d.recv_scales = a.add<float>(static_cast<std::size_t>(L * blocks * rows));
    d.recv_count = a.add<std::int32_t>(static_cast<std::size_t>(L));
    d.recv_src_info = a.add<std::int32_t>(static_cast<std::size_t>(L * rows));
    d.layout_range = a.add<std::int64_t>(static_cast<std::size_t>(L * R));
    d.wait_ns = a.add<std::int64_t>(static_cast<std::size_t>(L * R));
    p::LowLatencyCombinePlan& c = a.combine;
    c.ctx = d.ctx;
    // The experts' rows: any bf16 values do (0x3c3c, about 0.0115, filled on the GPU: [E/R, R*T, H] is
    // hundreds of MB per rank at the decode shape).
    const std::size_t y_count = static_cast<std::size_t>(L * rows * H);
    auto* y = a.add<std::uint16_t>(y_count);
    check_cuda(cudaMemset(y, 0x3c, y_count * 2), "fill the experts' rows");
    c.x = y;
    c.layout_range = d.layout_range;
    c.topk_idx = d.topk_idx;
    c.topk_weights = a.add<float>(routing.topk_weights.size(), routing.topk_weights.data());
    c.slot = d.slot;
    c.send_count = d.send_count;
    c.num_tokens = T;
    c.num_topk = K;
    c.out = a.add<std::uint16_t>(static_cast<std::size_t>(T * H));
    c.wait_ns = a.add<std::int64_t>(static_cast<std::size_t>(E));
    c.row_base = a.add<std::int64_t>(static_cast<std::size_t>(E));
  }

  // The uploads ran on the legacy stream (a pageable copy may return before it lands), which the bench's
  // non-blocking stream does not wait for.
  check_cuda(cudaDeviceSynchronize(), "the uploads");
  const gpu_bench::detail::Stream owned_stream;
  const cudaStream_t stream = owned_stream.get();
  const gpu_bench::detail::Event marks[3];
  auto enqueue_dispatch = [&](std::uint32_t operation) {
    std::vector<p::LowLatencyDispatchPlan> plans;
    for (const RankArrays& a : ranks) plans.push_back(p::at_operation(a.dispatch, operation));
    engine.dispatch_send(plans, stream);
    engine.dispatch_receive(plans, stream);
  };
  auto enqueue_combine = [&](std::uint32_t operation) {
    std::vector<p::LowLatencyCombinePlan> plans;
    for (const RankArrays& a : ranks) plans.push_back(p::at_operation(a.combine, operation));
    engine.combine_send(plans, stream);
    engine.combine_receive(plans, stream);
  };
  auto check_counts = [&](const char* when) {
    for (int r = 0; r < R; ++r) {
      std::vector<std::int32_t> got(static_cast<std::size_t>(L));
      check_cuda(cudaMemcpy(got.data(), ranks[r].dispatch.recv_count, got.size() * 4, cudaMemcpyDeviceToHost),
                 "download the counts");
      if (got != ranks[r].expected_count) {
        fail(Errc::internal,
             std::string("bench gpu-low-latency: ") + when + ", rank " + std::to_string(r) +
                 " received other per-expert counts than its experts were sent (a rank masked?)");
      }
    }
  };
  // The first round as plain launches (operations 0 and 1: a fresh cluster starts at 0), checked.
  enqueue_dispatch(0);
  enqueue_combine(1);
  engine.finish(stream);  // raises what a phase recorded
  check_counts("after the first round");
  // Then each half as a CUDA graph, so that the figures are the GPU's and not the host's ~50 launches per
  // operation; a replay is the next operation (the kernels number operations from a counter on the GPU), and
  // dispatch and combine alternate, as the buffers' parity wants.
  auto capture = [&](const std::function<void()>& enqueue) {
    cudaGraph_t graph = nullptr;
    check_cuda(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    enqueue();
    check_cuda(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
    cudaGraphExec_t exec = nullptr;
    check_cuda(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
    cudaGraphDestroy(graph);
    return exec;
  };
  cudaGraphExec_t dispatch_graph = capture([&] { enqueue_dispatch(2); });
  cudaGraphExec_t combine_graph = capture([&] { enqueue_combine(3); });
  std::vector<double> dispatch_us, combine_us;
  for (int i = 0; i < args.warmup + args.iters; ++i) {
    check_cuda(cudaEventRecord(marks[0].get(), stream), "cudaEventRecord");
    check_cuda(cudaGraphLaunch(dispatch_graph, stream), "cudaGraphLaunch");
    check_cuda(cudaEventRecord(marks[1].get(), stream), "cudaEventRecord");
    check_cuda(cudaGraphLaunch(combine_graph, stream), "cudaGraphLaunch");
    check_cuda(cudaEventRecord(marks[2].get(), stream), "cudaEventRecord");
    engine.finish(stream);
    if (i < args.warmup) continue;
    float first = 0, second = 0;
    check_cuda(cudaEventElapsedTime(&first, marks[0].get(), marks[1].get()), "cudaEventElapsedTime");
    check_cuda(cudaEventElapsedTime(&second, marks[1].get(), marks[2].get()), "cudaEventElapsedTime");
    dispatch_us.push_back(first * 1e3);
    combine_us.push_back(second * 1e3);
  }
  check_counts("after the timed rounds");
  cudaGraphExecDestroy(dispatch_graph);
  cudaGraphExecDestroy(combine_graph);

  // The ranks' kernels run one after another on the bench's one stream: blocks_per_rank blocks at a time.
  const int sms_used = std::min(args.blocks_per_rank, gpu.sms);
  const double copy_gbps = gpu_bench::measure_copy_kernel(0, sms_used, std::size_t{1} << 30, 20).gbps;
  const double full_copy = gpu_bench::measure_device_copy(0, std::size_t{1} << 30, 20);
  const double dispatch_p50 = bench::percentile(dispatch_us, 0.5),
               combine_p50 = bench::percentile(combine_us, 0.5);
  const double dispatch_gbps = dispatch_bytes / (dispatch_p50 * 1e3);
  const double combine_gbps = combine_bytes / (combine_p50 * 1e3);
  std::printf(
      "ferry bench gpu-low-latency: %s, %d SMs; %d x %d virtual ranks, %lld tokens/rank, hidden %lld, top-%d "
      "of "
      "%lld, %s dispatch, bf16 combine; %d blocks per rank in the bulk phases; the ranks' kernels run one "
      "after "
      "another (CUDA graph replays)\n",
      gpu.name.c_str(), gpu.sms, args.nodes, args.ranks_per_node, static_cast<long long>(T),
      static_cast<long long>(H), K, static_cast<long long>(E), fp8 ? "fp8" : "bf16", args.blocks_per_rank);
  std::printf("  %-10s %14s %14s %16s %12s\n", "call", "all ranks p50", "all ranks p99", "per rank (p50/R)",
              "GB/s (p50)");
  std::printf("  %-10s %11.1f us %11.1f us %13.1f us %12.1f\n", "dispatch", dispatch_p50,
              bench::percentile(dispatch_us, 0.99), dispatch_p50 / R, dispatch_gbps);
  std::printf("  %-10s %11.1f us %11.1f us %13.1f us %12.1f\n", "combine", combine_p50,
              bench::percentile(combine_us, 0.99), combine_p50 / R, combine_gbps);
  std::printf("  bounds: copy kernel on %d SMs %.0f GB/s (read + write), full-GPU device copy %.0f GB/s\n",
              sms_used, copy_gbps, full_copy);
  if (!args.json.empty()) {
    const nlohmann::json report = {{"gpu", gpu.name},
                                   {"sms", gpu.sms},
                                   {"nodes", args.nodes},
                                   {"ranks_per_node", args.ranks_per_node},
                                   {"tokens", T},
                                   {"hidden", H},
                                   {"topk", K},
                                   {"experts", E},
                                   {"dispatch", fp8 ? "fp8" : "bf16"},
                                   {"blocks_per_rank", args.blocks_per_rank},
                                   {"iters", args.iters},
                                   {"ranks_serialized", true},
                                   {"dispatch_us",
                                    {{"p50", dispatch_p50},
                                     {"p99", bench::percentile(dispatch_us, 0.99)},
                                     {"per_rank_p50", dispatch_p50 / R}}},
                                   {"combine_us",
                                    {{"p50", combine_p50},
                                     {"p99", bench::percentile(combine_us, 0.99)},
                                     {"per_rank_p50", combine_p50 / R}}},
                                   {"dispatch_gbps", dispatch_gbps},
                                   {"combine_gbps", combine_gbps},
                                   {"copy_kernel_gbps_same_sms", copy_gbps},
                                   {"full_copy_gbps", full_copy}};
    std::ofstream(args.json) << report.dump(2) << "\n";
  }
  return 0;
}

}  // namespace ferry::tools
