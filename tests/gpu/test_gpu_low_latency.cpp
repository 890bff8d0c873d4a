// The low-latency mode's CUDA executor against its host executor, bit for bit, on virtual clusters (every
// rank a virtual rank of this process on one GPU; other nodes through the proxy's device-to-device copies).
// The host executor is checked against the reference by tests/lowlat; here the same plans run on both and
// every output must agree: packed rows, scales (fp32 and UE8M0), counts, source tokens, ranges, combined
// rows. Also DDCC and DCDC rounds on one buffer pair, and CUDA graphs (no host synchronisation inside)
// replayed several times, each replay the next operations. Exits 77 without a GPU
// (gpu_main.cpp).
#include <cuda_runtime.h>

#include <catch2/catch.hpp>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "dispatch/low_latency_reference.hpp"
#include "ferry/kernels/cuda/low_latency_engine.hpp"
#include "ferry/kernels/host/local_world.hpp"
#include "ferry/kernels/host/low_latency_engine.hpp"

namespace p = ferry::kernels::protocol;
namespace h = ferry::kernels::host;
namespace c = ferry::kernels::cuda;
using ferry::test::LowLatencyScenario;

namespace {

void cuda_ok(cudaError_t status, const char* what) {
  if (status != cudaSuccess) FAIL(what << ": " << cudaGetErrorString(status));
}

// Device memory of `bytes`, zeroed, freed at the end of the test.
class DeviceBlock {
 public:
  explicit DeviceBlock(std::size_t bytes) : bytes_(bytes == 0 ? 16 : bytes) {
    void* memory = nullptr;
    cuda_ok(cudaMalloc(&memory, bytes_), "cudaMalloc");
    cuda_ok(cudaMemset(memory, 0, bytes_), "cudaMemset");
    memory_.reset(static_cast<std::byte*>(memory));
  }
  std::byte* data() const { return memory_.get(); }
  void upload(const void* host, std::size_t bytes) const {
    cuda_ok(cudaMemcpy(memory_.get(), host, bytes, cudaMemcpyHostToDevice), "upload");
  }
  std::vector<std::byte> download() const {
    std::vector<std::byte> host(bytes_);
    cuda_ok(cudaMemcpy(host.data(), memory_.get(), bytes_, cudaMemcpyDeviceToHost), "download");
    return host;
  }

 private:
  struct Free {
    void operator()(std::byte* memory) const { cudaFree(memory); }
  };
  std::size_t bytes_;
  std::unique_ptr<std::byte, Free> memory_;
};

// Every array one rank's operation touches, on the host and on the GPU alike.
struct Arrays {
  std::vector<std::vector<std::byte>> host;
  std::vector<DeviceBlock> device;

  std::byte* add(std::size_t bytes, bool on_device, const void* init = nullptr) {
    if (on_device) {
      device.emplace_back(bytes);
      if (init != nullptr) device.back().upload(init, bytes);
      return device.back().data();
    }
    host.emplace_back(bytes == 0 ? 16 : bytes);
    if (init != nullptr) std::memcpy(host.back().data(), init, bytes);
    return host.back().data();
  }
  std::vector<std::byte> read(std::size_t index, bool on_device) const {
    return on_device ? device[index].download() : host[index];
  }
};

// The arrays' order in Arrays, so both sides read the same outputs back.
enum Slot {
  kX,
  kTopk,
  kSlot,
  kSendCount,
  kRecvX,
  kScales,
  kCount,
  kSrcInfo,
  kRange,
  kWait,
  kMask,
  kY,
  kWeights,
  kOut,
  kCombineWait,
  kRowBase,
  kSlots
};

struct RankRun {
  Arrays arrays;
  p::LowLatencyDispatchPlan dispatch;
  p::LowLatencyCombinePlan combine;
};

p::LowLatencyContext context_of(const LowLatencyScenario& scenario, int rank, std::uint32_t operation,
                                std::uint64_t* mask) {
  p::LowLatencyContext ctx;
  ctx.layout = p::make_low_latency_layout(
      {scenario.max_tokens, scenario.hidden, scenario.num_ranks(), scenario.num_experts});
  ctx.topo.num_nodes = scenario.num_nodes;
  ctx.topo.local_size = scenario.local_size;
  ctx.rank = rank;
  ctx.operation = operation;
  ctx.buffer = static_cast<int>(operation % 2);
  ctx.mask_after_ns = 2'000'000'000ull;
  ctx.mask = mask;
  return ctx;
}

// One rank's dispatch (operation `op`) and combine (operation `op + 1`) plans over fresh arrays.
void build(RankRun& run, const LowLatencyScenario& scenario, int rank, std::uint32_t op,
           const ferry::test::DispatchFlags& flags, const std::vector<std::uint64_t>& mask, bool on_device) {
  const ferry::test::LowLatencyRank& data = scenario.ranks[rank];
  const std::int64_t T = data.num_tokens, K = scenario.num_topk, H = scenario.hidden,
                     E = scenario.num_experts;
  const std::int64_t L = scenario.local_experts(), rows = scenario.rows_per_expert(),
                     R = scenario.num_ranks();
  const std::int64_t blocks = p::scale_blocks(H);
  Arrays& a = run.arrays;
  std::vector<std::int32_t> slot(T * K), send_count(E);
  if (!on_device) p::assign_slots(data.topk.data(), T, K, E, slot.data(), send_count.data());
  std::vector<std::byte*> at(kSlots);
  at[kX] = a.add(data.x.size() * 2, on_device, data.x.data());
  at[kTopk] = a.add(data.topk.size() * 8, on_device, data.topk.data());
  at[kSlot] = a.add(slot.size() * 4, on_device, slot.data());
  at[kSendCount] = a.add(send_count.size() * 4, on_device, send_count.data());
  at[kRecvX] = a.add(static_cast<std::size_t>(L * rows * H) * (flags.fp8 ? 1 : 2), on_device);
  at[kScales] = a.add(static_cast<std::size_t>(L * rows * blocks) * 4, on_device);
  at[kCount] = a.add(static_cast<std::size_t>(L) * 4, on_device);
  at[kSrcInfo] = a.add(static_cast<std::size_t>(L * rows) * 4, on_device);
  at[kRange] = a.add(static_cast<std::size_t>(L * R) * 8, on_device);
  at[kWait] = a.add(static_cast<std::size_t>(L * R) * 8, on_device);
  at[kMask] = a.add(mask.size() * 8, on_device, mask.data());
  std::vector<std::uint16_t> y(static_cast<std::size_t>(L * rows * H));
  for (std::size_t i = 0; i < y.size(); ++i)
    y[i] = p::float_to_bf16(static_cast<float>(i % 97) / 32.0f - 1.0f);
  at[kY] = a.add(y.size() * 2, on_device, y.data());
  at[kWeights] = a.add(data.weights.size() * 4, on_device, data.weights.data());
  at[kOut] = a.add(static_cast<std::size_t>(T * H) * 2, on_device);
  at[kCombineWait] = a.add(static_cast<std::size_t>(E) * 8, on_device);
  at[kRowBase] = a.add(static_cast<std::size_t>(E) * 8, on_device);

  p::LowLatencyDispatchPlan& d = run.dispatch;
  d.ctx = context_of(scenario, rank, op, reinterpret_cast<std::uint64_t*>(at[kMask]));
  d.message = p::low_latency_message(flags.fp8, H);
  d.round_scale = flags.round_scale;
  d.ue8m0 = flags.ue8m0;
  d.tag = p::low_latency_tag(op, false);
  d.shape_check = p::low_latency_shape_check(d.ctx.layout.shape, flags.fp8);
  d.x = reinterpret_cast<const std::uint16_t*>(at[kX]);
  d.topk_idx = reinterpret_cast<const std::int64_t*>(at[kTopk]);
  d.num_tokens = T;
  d.num_topk = static_cast<int>(K);
  d.slot = reinterpret_cast<const std::int32_t*>(at[kSlot]);
  d.send_count = reinterpret_cast<const std::int32_t*>(at[kSendCount]);
  d.recv_x = at[kRecvX];
  if (flags.ue8m0) {
    d.recv_scales_ue8m0 = reinterpret_cast<std::uint8_t*>(at[kScales]);
  } else if (flags.fp8) {
    d.recv_scales = reinterpret_cast<float*>(at[kScales]);
  }
  d.recv_count = reinterpret_cast<std::int32_t*>(at[kCount]);
  d.recv_src_info = reinterpret_cast<std::int32_t*>(at[kSrcInfo]);
  d.layout_range = reinterpret_cast<std::int64_t*>(at[kRange]);
  d.wait_ns = reinterpret_cast<std::int64_t*>(at[kWait]);

  p::LowLatencyCombinePlan& m = run.combine;
  m.ctx = context_of(scenario, rank, op + 1, reinterpret_cast<std::uint64_t*>(at[kMask]));
  m.tag = p::low_latency_tag(op + 1, true);
  m.x = reinterpret_cast<const std::uint16_t*>(at[kY]);
  m.layout_range = d.layout_range;
  m.topk_idx = d.topk_idx;
  m.topk_weights = reinterpret_cast<const float*>(at[kWeights]);
  m.slot = d.slot;
  m.send_count = d.send_count;
  m.num_tokens = T;
  m.num_topk = static_cast<int>(K);
  m.out = reinterpret_cast<std::uint16_t*>(at[kOut]);
  m.wait_ns = reinterpret_cast<std::int64_t*>(at[kCombineWait]);
  m.row_base = reinterpret_cast<std::int64_t*>(at[kRowBase]);
}

// The outputs both sides must agree on (packed rows past the counts are not compared: nobody writes them).
void compare(const LowLatencyScenario& scenario, int rank, const RankRun& host, const RankRun& gpu,
             const ferry::test::DispatchFlags& flags) {
  INFO("rank " << rank);
  auto read = [](const RankRun& run, Slot slot, bool device) { return run.arrays.read(slot, device); };
  const auto count_host = read(host, kCount, false), count_gpu = read(gpu, kCount, true);
  REQUIRE(count_host == count_gpu);
  CHECK(read(host, kRange, false) == read(gpu, kRange, true));
  const std::int64_t L = scenario.local_experts(), rows = scenario.rows_per_expert(), H = scenario.hidden;
  const std::size_t row_bytes = static_cast<std::size_t>(H) * (flags.fp8 ? 1 : 2);
  const auto x_host = read(host, kRecvX, false), x_gpu = read(gpu, kRecvX, true);
  const auto info_host = read(host, kSrcInfo, false), info_gpu = read(gpu, kSrcInfo, true);
  const auto* counts = reinterpret_cast<const std::int32_t*>(count_host.data());
  for (std::int64_t e = 0; e < L; ++e) {
    const std::size_t first = static_cast<std::size_t>(e * rows);
    CHECK(std::memcmp(x_host.data() + first * row_bytes, x_gpu.data() + first * row_bytes,
                      counts[e] * row_bytes) == 0);
    CHECK(std::memcmp(info_host.data() + first * 4, info_gpu.data() + first * 4, counts[e] * 4) == 0);
  }
  if (flags.fp8) {
    // Scales of rows past the counts are unwritten on both sides (zero here): the whole tensor compares.
    CHECK(read(host, kScales, false) == read(gpu, kScales, true));
  }
  CHECK(read(host, kOut, false) == read(gpu, kOut, true));
}

// One step of a pattern: run `run`'s dispatch or combine (both halves) on every rank.
struct Step {
  int run;
  bool combine;
};

// Runs a pattern of dispatches and combines over `runs` sets of arrays, `rounds` times, on the host executor
// and on the GPU, and compares every run's outputs after each round. Operations are numbered in step order
// across rounds (operation n uses buffer n % 2). With `graph`, the GPU captures one round in a CUDA graph and
// launches the graph `rounds` times: each launch must behave as the next operations (the kernels number them
// from a counter in device memory), which the host executor runs with their real numbers.
void run_pattern(int nodes, int local, const ferry::test::DispatchFlags& flags, std::uint64_t seed, int runs,
                 const std::vector<Step>& steps, int rounds, bool graph) {
  ferry::test::LowLatencyShapeSpec spec;
  spec.num_nodes = nodes;
  spec.local_size = local;
  spec.hidden = 512;
  spec.max_tokens = 24;
  spec.num_topk = 4;
  std::mt19937_64 rng(seed);
  std::vector<LowLatencyScenario> scenarios;
  for (int k = 0; k < runs; ++k) scenarios.push_back(ferry::test::make_low_latency_scenario(spec, rng));
  const int R = scenarios.front().num_ranks();
  const std::size_t bytes = scenarios.front().bytes_hint();

  c::LowLatencyDeviceOptions options;
  options.timeout = std::chrono::seconds(20);
  c::LowLatencyVirtualCluster cluster(nodes, local, bytes, options);
  p::Topology topo;
  topo.num_nodes = nodes;
  topo.local_size = local;
  h::LocalWorld world(topo, bytes);
  std::vector<std::unique_ptr<h::LowLatencyEngine>> hosts;
  for (int r = 0; r < R; ++r)
    hosts.push_back(std::make_unique<h::LowLatencyEngine>(r, topo, world.memory(r)));

  // [run][rank]
  std::vector<std::vector<RankRun>> host_runs(runs), gpu_runs(runs);
  const std::vector<std::uint64_t> mask(R, 0);
  for (int k = 0; k < runs; ++k) {
    host_runs[k].resize(R);
    gpu_runs[k].resize(R);
    for (int r = 0; r < R; ++r) {
      build(host_runs[k][r], scenarios[k], r, 0, flags, mask, false);
      build(gpu_runs[k][r], scenarios[k], r, 0, flags, mask, true);
    }
  }
  cuda_ok(cudaDeviceSynchronize(),
          "the uploads");  // legacy-stream copies before a non-blocking stream's work
  cudaStream_t stream = nullptr;
  cuda_ok(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking), "cudaStreamCreate");
  c::LowLatencyDeviceEngine& engine = cluster.engine();

  // Every rank's send half before any receive half, as the GPU's stream orders them.
  auto host_half = [&](const Step& step, std::uint32_t operation, bool send) {
    for (int r = 0; r < R; ++r) {
      RankRun& run = host_runs[step.run][r];
      h::LowLatencyEngine& host = *hosts[r];
      if (step.combine) {
        const p::LowLatencyCombinePlan plan = p::at_operation(run.combine, operation);
        send ? host.combine_send(plan) : host.combine_receive(plan);
      } else {
        const p::LowLatencyDispatchPlan plan = p::at_operation(run.dispatch, operation);
        send ? host.dispatch_send(plan) : host.dispatch_receive(plan);
      }
    }
  };
  auto host_step = [&](const Step& step, std::uint32_t operation) {
    host_half(step, operation, true);
    host_half(step, operation, false);
  };
  auto gpu_step = [&](const Step& step, std::uint32_t operation) {
    if (step.combine) {
      std::vector<p::LowLatencyCombinePlan> plans;
      for (int r = 0; r < R; ++r) plans.push_back(p::at_operation(gpu_runs[step.run][r].combine, operation));
      engine.combine_send(plans, stream);
      engine.combine_receive(plans, stream);
    } else {
      std::vector<p::LowLatencyDispatchPlan> plans;
      for (int r = 0; r < R; ++r) plans.push_back(p::at_operation(gpu_runs[step.run][r].dispatch, operation));
      engine.dispatch_send(plans, stream);
      engine.dispatch_receive(plans, stream);
    }
  };
  auto compare_all = [&](int round) {
    INFO("round " << round);
    for (int k = 0; k < runs; ++k)
      for (int r = 0; r < R; ++r) compare(scenarios[k], r, host_runs[k][r], gpu_runs[k][r], flags);
  };

  std::uint32_t operation = 0;
  if (graph) {
    // One round, captured with operations 0 .. steps - 1 (nothing in it waits on the host).
    cudaGraph_t captured = nullptr;
    cuda_ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeThreadLocal), "cudaStreamBeginCapture");
    for (std::size_t i = 0; i < steps.size(); ++i) gpu_step(steps[i], static_cast<std::uint32_t>(i));
    cuda_ok(cudaStreamEndCapture(stream, &captured), "cudaStreamEndCapture");
    cudaGraphExec_t exec = nullptr;
    cuda_ok(cudaGraphInstantiate(&exec, captured, 0), "cudaGraphInstantiate");
    for (int round = 0; round < rounds; ++round) {
      for (const Step& step : steps) host_step(step, operation++);
      cuda_ok(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
      engine.finish(stream);
      compare_all(round);
    }
    cudaGraphExecDestroy(exec);
    cudaGraphDestroy(captured);
  } else {
    for (int round = 0; round < rounds; ++round) {
      for (const Step& step : steps) {
        host_step(step, operation);
        gpu_step(step, operation++);
        engine.finish(stream);
      }
      compare_all(round);
    }
  }
  cudaStreamDestroy(stream);
}

// One dispatch and one combine on every rank, on the host executor and on the GPU, then compared.
void run_both(int nodes, int local, const ferry::test::DispatchFlags& flags, std::uint64_t seed,
              bool graph = false) {
  run_pattern(nodes, local, flags, seed, 1, {{0, false}, {0, true}}, 1, graph);
}

}  // namespace

TEST_CASE("GPU low-latency dispatch and combine equal the host executor's (1 x 4, 2 x 2)", "[gpu][lowlat]") {
  std::uint64_t seed = 11;
  for (auto shape : {std::pair{1, 4}, std::pair{2, 2}}) {
    for (const ferry::test::DispatchFlags& flags :
         {ferry::test::DispatchFlags{true, false, false}, ferry::test::DispatchFlags{true, true, true},
          ferry::test::DispatchFlags{false, false, false}}) {
      INFO(shape.first << "x" << shape.second << " fp8 " << flags.fp8 << " ue8m0 " << flags.ue8m0);
      run_both(shape.first, shape.second, flags, seed++);
    }
  }
}

TEST_CASE("GPU low-latency dispatch captured in a CUDA graph equals the host executor's", "[gpu][lowlat]") {
  run_both(2, 2, {true, true, false}, 99, true);
}

// A buffer carries a dispatch and, operations later, a combine: dispatch and combine count words must have
// one writer each (the device_copy fabric keeps each word's value on the host).
TEST_CASE("GPU low-latency DDCC and DCDC rounds equal the host executor's (2 x 2, 1 x 4)", "[gpu][lowlat]") {
  const std::vector<Step> ddcc = {{0, false}, {1, false}, {0, true}, {1, true}};
  const std::vector<Step> dcdc = {{0, false}, {0, true}, {1, false}, {1, true}};
  std::uint64_t seed = 200;
  for (auto shape : {std::pair{2, 2}, std::pair{1, 4}}) {
    INFO(shape.first << "x" << shape.second);
    run_pattern(shape.first, shape.second, {true, false, false}, seed++, 2, ddcc, 3, false);
    run_pattern(shape.first, shape.second, {false, false, false}, seed++, 2, dcdc, 3, false);
  }
}

// A graph replayed N times is N rounds of operations: acquires wait for the previous replay's releases and
// the words carry each replay's own tags.
TEST_CASE("GPU low-latency graph replayed several times equals as many host operations", "[gpu][lowlat]") {
  run_pattern(2, 2, {true, true, true}, 300, 1, {{0, false}, {0, true}}, 4, true);  // even: same buffers
  run_pattern(2, 2, {true, false, false}, 301, 1, {{0, false}}, 3, true);           // odd: buffers alternate
  run_pattern(2, 2, {false, false, false}, 302, 2, {{0, false}, {1, false}, {0, true}, {1, true}}, 3, true);
}
