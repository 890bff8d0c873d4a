// The CUDA executor against the host reference, on virtual clusters of one GPU: every received row, scale,
// topk slot and source record, and every combined value and weight, compared exactly; outputs poisoned before
// every dispatch so an unwritten row cannot pass; cached and worst-case dispatch; the device layout against
// compute_layout; a stalled peer gives the timeout record; a worst-case dispatch and combine captured in a
// CUDA graph (global capture mode) and replayed, and what a capture refuses. Randomized (FERRY_TEST_SEED
// repeats a run).
//
// Tags scripts/gpu-check selects by: [smoke] the first case it runs (1x2, one dispatch and one combine: if it
// fails, nothing else runs); [small] the cases it runs under compute-sanitizer (fp8, the layout); [graph] the
// graph cases; [timing] cases whose bounds assume full speed (kept out of [small]: under a sanitizer the
// stall test's healthy first dispatch could itself outlast its 2 s timeout).
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "../dispatch/cluster_run.hpp"
#include "../dispatch/reference.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/cuda/device_layout.hpp"
#include "ferry/kernels/cuda/virtual_cluster.hpp"
#include "ferry/kernels/protocol/numeric.hpp"
#include "ferry/layout.hpp"
#include "owned_stream.hpp"

using namespace ferry;
using namespace ferry::test;
namespace kc = ferry::kernels::cuda;
namespace p = ferry::kernels::protocol;

namespace {

void cuda_ok(cudaError_t status, const char* what) {
  if (status != cudaSuccess)
    FAIL(what << ": " << cudaGetErrorName(status) << " " << cudaGetErrorString(status));
}

// A device copy of a host vector, freed with the object.
template <class T>
struct DeviceCopy {
  explicit DeviceCopy(const std::vector<T>& host) : count(host.size()) {
    if (count == 0) return;
    cuda_ok(cudaMalloc(reinterpret_cast<void**>(&data), count * sizeof(T)), "cudaMalloc");
    cuda_ok(cudaMemcpy(data, host.data(), count * sizeof(T), cudaMemcpyHostToDevice), "upload");
  }
  explicit DeviceCopy(std::size_t elements) : count(elements) {
    if (count > 0) cuda_ok(cudaMalloc(reinterpret_cast<void**>(&data), count * sizeof(T)), "cudaMalloc");
  }
  ~DeviceCopy() { cudaFree(data); }
  DeviceCopy(const DeviceCopy&) = delete;
  DeviceCopy& operator=(const DeviceCopy&) = delete;
  T* data = nullptr;
  std::size_t count = 0;
};

template <class T>
std::vector<T> download(const T* device, std::size_t count) {
  std::vector<T> host(count);
  if (count > 0)
    cuda_ok(cudaMemcpy(host.data(), device, count * sizeof(T), cudaMemcpyDeviceToHost), "download");
  return host;
}

p::PayloadKind kind_of(DType dtype) {
  return dtype == DType::fp32   ? p::PayloadKind::fp32
         : dtype == DType::bf16 ? p::PayloadKind::bf16
                                : p::PayloadKind::fp8_e4m3;
}

struct Setup {
  int num_sms = 4;
  int rdma_slots = 8;
  int nvl_slots = 8;
  int rdma_chunk = 4;
  int nvl_chunk = 4;
  std::chrono::milliseconds timeout{20000};
};

p::LayoutParams params_of(const Scenario& scenario, const Setup& setup, std::int64_t max_hidden) {
  p::LayoutParams params;
  params.topo = {scenario.num_nodes, scenario.local_size, setup.num_sms / 2};
  params.max_hidden = max_hidden;
  params.max_topk = 8;
  params.rdma_slots = static_cast<std::uint64_t>(setup.rdma_slots);
  params.nvl_slots = static_cast<std::uint64_t>(setup.nvl_slots);
  return params;
}

kc::DeviceOptions options_of(const Setup& setup) {
  kc::DeviceOptions options;
  options.rdma_chunk = setup.rdma_chunk;
  options.nvl_chunk = setup.nvl_chunk;
  options.timeout = setup.timeout;
  options.poison_outputs = true;
  return options;
}

// Every rank's inputs on the GPU, the layout computed on the host by compute_layout.
struct DeviceInputs {
  DeviceInputs(const Scenario& scenario) {
    const int R = scenario.num_ranks();
    for (int r = 0; r < R; ++r) {
      const RankData& data = scenario.ranks[r];
      const Layout layout =
          compute_layout(TensorView(data.topk.data(), {data.num_tokens, scenario.num_topk}, DType::int64),
                         scenario.num_experts, R, scenario.local_size, scenario.num_nodes);
      x.push_back(std::make_unique<DeviceCopy<std::uint8_t>>(data.x));
      scales.push_back(std::make_unique<DeviceCopy<float>>(data.scales));
      topk.push_back(std::make_unique<DeviceCopy<std::int64_t>>(data.topk));
      weights.push_back(std::make_unique<DeviceCopy<float>>(data.weights));
      in_rank.push_back(std::make_unique<DeviceCopy<std::uint8_t>>(layout.is_token_in_rank));
      kc::DeviceDispatchInput input;
      input.x = reinterpret_cast<const std::byte*>(x.back()->data);
      input.x_scales = scenario.dtype == DType::fp8_e4m3 ? scales.back()->data : nullptr;
      input.topk_idx = topk.back()->data;
      input.topk_weights = weights.back()->data;
      input.in_rank = in_rank.back()->data;
      input.num_tokens = data.num_tokens;
      inputs.push_back(input);
    }
  }
  std::vector<std::unique_ptr<DeviceCopy<std::uint8_t>>> x;
  std::vector<std::unique_ptr<DeviceCopy<float>>> scales;
  std::vector<std::unique_ptr<DeviceCopy<std::int64_t>>> topk;
  std::vector<std::unique_ptr<DeviceCopy<float>>> weights;
  std::vector<std::unique_ptr<DeviceCopy<std::uint8_t>>> in_rank;
  std::vector<kc::DeviceDispatchInput> inputs;
};

kc::DeviceDispatchShape shape_of(const Scenario& scenario) {
  kc::DeviceDispatchShape shape;
  shape.kind = kind_of(scenario.dtype);
  shape.hidden = scenario.hidden;
  shape.num_topk = scenario.num_topk;
  shape.num_experts = scenario.num_experts;
  shape.fingerprint = 0x5eed;
  return shape;
}

std::string where(int rank, std::int64_t row, const Source& source) {
  return "rank " + std::to_string(rank) + " row " + std::to_string(row) + " (source rank " +
         std::to_string(source.rank) + " token " + std::to_string(source.token) + ")";
}

// Every received row, scale, topk slot and source record of rank r, exactly; padding rows (worst case) zero.
std::string check_rank(const Scenario& scenario, const std::vector<Source>& want, int r,
                       const kc::DeviceDispatchResult& got, bool with_topk) {
  const std::int64_t received = static_cast<std::int64_t>(want.size());
  if (got.num_recv != received) {
    return "rank " + std::to_string(r) + " received " + std::to_string(got.num_recv) + " tokens, expected " +
           std::to_string(received);
  }
  const std::size_t row_bytes = scenario.row_bytes();
  const int K = scenario.num_topk;
  const std::int64_t blocks = scenario.scale_blocks();
  const auto x = download(reinterpret_cast<const std::uint8_t*>(got.recv_x), got.rows * row_bytes);
  const auto src_rank = kc::device_recv_src_rank(*got.record);
  const auto src_token = kc::device_recv_src_token(*got.record);
  std::vector<float> scales;
  if (scenario.dtype == DType::fp8_e4m3) scales = download(got.recv_x_scales, got.rows * blocks);
  std::vector<std::int64_t> ids;
  std::vector<float> weights;
  if (with_topk) {
    ids = download(got.recv_topk_idx, got.rows * K);
    weights = download(got.recv_topk_weights, got.rows * K);
  }
  for (std::int64_t i = 0; i < received; ++i) {
    const Source& source = want[i];
    const RankData& data = scenario.ranks[source.rank];
    if (src_rank[i] != source.rank || src_token[i] != source.token) {
      return where(r, i, source) + ": the record says source rank " + std::to_string(src_rank[i]) +
             " token " + std::to_string(src_token[i]);
    }
    if (std::memcmp(x.data() + i * row_bytes, data.x.data() + source.token * row_bytes, row_bytes) != 0) {
      return where(r, i, source) + ": recv_x differs from the source row";
    }
    if (!scales.empty() && std::memcmp(scales.data() + i * blocks, data.scales.data() + source.token * blocks,
                                       blocks * 4) != 0) {
      return where(r, i, source) + ": recv_x_scales differ";
    }
    if (!with_topk) continue;
    for (int k = 0; k < K; ++k) {
      const std::int64_t expert = data.topk[source.token * K + k];
      const bool local = expert >= 0 && scenario.rank_of_expert(expert) == r;
      const std::int64_t want_id = local ? expert - r * scenario.experts_per_rank() : -1;
      const float want_weight = local ? data.weights[source.token * K + k] : 0.0f;
      if (ids[i * K + k] != want_id || std::memcmp(&weights[i * K + k], &want_weight, 4) != 0) {
        return where(r, i, source) + " slot " + std::to_string(k) + ": got expert " +
               std::to_string(ids[i * K + k]) + ", expected " + std::to_string(want_id);
      }
    }
  }
  for (std::int64_t i = received; i < got.rows; ++i) {
    for (std::size_t b = 0; b < row_bytes; ++b) {
      if (x[i * row_bytes + b] != 0)
        return "rank " + std::to_string(r) + " padding row " + std::to_string(i) + " is not zero";
    }
  }
  return "";
}

struct RoundTrip {
  bool worst = false;
  bool cached = false;
};

// Dispatch (and a cached repeat), check; combine with weights and bias, check.
void round_trip(const Scenario& scenario, const Setup& setup, const RoundTrip& how, std::mt19937_64& rng) {
  const int R = scenario.num_ranks();
  INFO(scenario.num_nodes << "x" << scenario.local_size << " H=" << scenario.hidden
                          << " K=" << scenario.num_topk << " " << to_string(scenario.dtype) << " num_sms "
                          << setup.num_sms << (how.worst ? " worst" : "") << (how.cached ? " cached" : ""));
  const OwnedStream owned_stream;  // first: destroyed after the results and outputs that free on it
  const cudaStream_t stream = owned_stream.get();
  kc::VirtualCluster cluster(params_of(scenario, setup, 7168), options_of(setup));
  DeviceInputs inputs(scenario);
  const auto sources = expected_sources(scenario);
  kc::DeviceDispatchShape shape = shape_of(scenario);
  std::int64_t worst = 0;
  for (const auto& rows : sources)
    worst = std::max<std::int64_t>(worst, static_cast<std::int64_t>(rows.size()));
  if (how.worst) shape.num_worst_tokens = worst + 5;

  auto results = cluster.engine().dispatch(shape, inputs.inputs, nullptr, stream);
  cluster.engine().finish(stream, &results);
  for (int r = 0; r < R; ++r) {
    const std::string diff = check_rank(scenario, sources[r], r, results[r], true);
    INFO(diff);
    REQUIRE(diff.empty());
  }
  if (how.cached) {
    std::vector<std::shared_ptr<kc::DeviceRecord>> records;
    for (const auto& result : results) records.push_back(result.record);
    auto again = cluster.engine().dispatch(shape, inputs.inputs, &records, stream);
    cluster.engine().finish(stream, &again);
    for (int r = 0; r < R; ++r) {
      const std::string diff = check_rank(scenario, sources[r], r, again[r], false);
      INFO("cached: " << diff);
      REQUIRE(diff.empty());
    }
  }

  // Combine bf16 results (fp32 when the dispatch was fp32) with the received weights and a bias.
  const DType result_type = scenario.dtype == DType::fp32 ? DType::fp32 : DType::bf16;
  const auto rows = make_results(scenario, sources, result_type, how.worst ? worst + 5 : 0, rng);
  const std::size_t row_bytes = static_cast<std::size_t>(scenario.hidden) * element_size(result_type);
  std::vector<std::vector<std::uint8_t>> bias(R);
  std::vector<std::vector<float>> weights(R);
  std::vector<std::unique_ptr<DeviceCopy<std::uint8_t>>> y, bias_device, out;
  std::vector<std::unique_ptr<DeviceCopy<float>>> y_weights, out_weights;
  std::vector<kc::DeviceCombineInput> combine(R);
  std::uniform_real_distribution<float> value(-2.0f, 2.0f);
  for (int r = 0; r < R; ++r) {
    const std::int64_t T = scenario.ranks[r].num_tokens;
    bias[r].resize(T * row_bytes);
    for (std::int64_t i = 0; i < T * scenario.hidden; ++i)
      p::store_element(kind_of(result_type), bias[r].data(), i, value(rng));
    weights[r].resize(results[r].rows * scenario.num_topk);
    for (float& w : weights[r]) w = value(rng);
    y.push_back(std::make_unique<DeviceCopy<std::uint8_t>>(rows[r]));
    bias_device.push_back(std::make_unique<DeviceCopy<std::uint8_t>>(bias[r]));
    out.push_back(std::make_unique<DeviceCopy<std::uint8_t>>(T * row_bytes));
    y_weights.push_back(std::make_unique<DeviceCopy<float>>(weights[r]));
    out_weights.push_back(
        std::make_unique<DeviceCopy<float>>(static_cast<std::size_t>(T * scenario.num_topk)));
    cuda_ok(cudaMemset(out.back()->data, 0xab, out.back()->count), "poison out");
    combine[r].y = reinterpret_cast<const std::byte*>(y.back()->data);
    combine[r].y_weights = y_weights.back()->data;
    combine[r].bias = reinterpret_cast<const std::byte*>(bias_device.back()->data);
    combine[r].out = reinterpret_cast<std::byte*>(out.back()->data);
    combine[r].out_weights = out_weights.back()->data;
    combine[r].record = results[r].record;
  }
  kc::DeviceCombineShape combine_shape;
  combine_shape.kind = kind_of(result_type);
  combine_shape.hidden = scenario.hidden;
  combine_shape.fingerprint = 0x5eed;
  cluster.engine().combine(combine_shape, combine, stream);
  cluster.engine().finish(stream);
  // The reference's weights cover the received rows only.
  std::vector<std::vector<float>> received_weights(R);
  for (int r = 0; r < R; ++r) {
    received_weights[r].assign(weights[r].begin(),
                               weights[r].begin() + sources[r].size() * scenario.num_topk);
  }
  const auto expected = expected_combine(scenario, sources, rows, result_type, &bias);
  const auto expected_weights = expected_combined_weights(scenario, sources, received_weights);
  for (int r = 0; r < R; ++r) {
    const auto got = download(out[r]->data, out[r]->count);
    INFO("rank " << r);
    REQUIRE(got == expected[r]);
    const auto got_weights = download(out_weights[r]->data, out_weights[r]->count);
    REQUIRE(std::memcmp(got_weights.data(), expected_weights[r].data(), got_weights.size() * 4) == 0);
  }
}

// dtype: as given, or drawn.
Scenario random_scenario(std::mt19937_64& rng, int nodes, int locals, std::int64_t max_tokens,
                         std::optional<DType> dtype = std::nullopt) {
  ScenarioShape shape;
  shape.num_nodes = nodes;
  shape.local_size = locals;
  shape.experts_per_rank = 4;
  const std::int64_t hiddens[] = {7168, 4096, 2048, 1000};
  shape.hidden = hiddens[std::uniform_int_distribution<int>(0, 3)(rng)];
  shape.num_topk = std::uniform_int_distribution<int>(1, 8)(rng);
  const DType dtypes[] = {DType::bf16, DType::fp32, DType::fp8_e4m3};
  shape.dtype = dtypes[std::uniform_int_distribution<int>(0, 2)(rng)];
  if (dtype) shape.dtype = *dtype;
  shape.max_tokens = max_tokens;
  shape.max_nodes = std::min(nodes, 4);
  return make_scenario(shape, rng);
}

}  // namespace

TEST_CASE("GPU smoke: one dispatch and one combine on a 1x2 virtual cluster", "[gpu][smoke]") {
  auto rng = seeded("gpu smoke");
  ScenarioShape shape;
  shape.num_nodes = 1;
  shape.local_size = 2;
  shape.experts_per_rank = 2;
  shape.num_topk = 2;
  shape.hidden = 256;
  shape.max_tokens = 16;
  Scenario scenario = make_scenario(shape, rng);
  Setup setup;
  setup.num_sms = 2;
  setup.timeout = std::chrono::milliseconds(10000);
  round_trip(scenario, setup, {false, false}, rng);
}

TEST_CASE("GPU dispatch and combine match the host reference on virtual clusters", "[gpu]") {
  auto rng = seeded("gpu topologies");
  const std::pair<int, int> topologies[] = {{1, 2}, {1, 4}, {1, 8}, {2, 2}, {2, 4}, {4, 2}};
  for (auto [nodes, locals] : topologies) {
    for (int repeat = 0; repeat < 2; ++repeat) {
      Scenario scenario = random_scenario(rng, nodes, locals, 300);
      Setup setup;
      setup.num_sms = nodes * locals >= 8 ? 4 : 8;
      round_trip(scenario, setup, {repeat == 1, repeat == 0}, rng);
    }
  }
}

TEST_CASE("GPU dispatch and combine on a small case, fp8", "[gpu][small]") {
  auto rng = seeded("gpu small");
  Scenario scenario = random_scenario(rng, 2, 2, 24, DType::fp8_e4m3);  // scales travel too
  Setup setup;
  setup.num_sms = 2;
  setup.rdma_slots = 2;
  setup.nvl_slots = 2;
  setup.rdma_chunk = 1;
  setup.nvl_chunk = 1;
  round_trip(scenario, setup, {false, true}, rng);
}

TEST_CASE("the device layout equals compute_layout and names bad routing", "[gpu][small]") {
  auto rng = seeded("gpu layout");
  Scenario scenario = random_scenario(rng, 4, 2, 500);
  const int R = scenario.num_ranks();
  kc::DeviceLayout device_layout(0);
  for (int r = 0; r < R; ++r) {
    const RankData& data = scenario.ranks[r];
    const Layout want =
        compute_layout(TensorView(data.topk.data(), {data.num_tokens, scenario.num_topk}, DType::int64),
                       scenario.num_experts, R, scenario.local_size, 4);
    DeviceCopy<std::int64_t> topk(data.topk);
    DeviceCopy<std::int64_t> per_rank(static_cast<std::size_t>(R)), per_node(4),
        per_expert(scenario.num_experts);
    DeviceCopy<std::uint8_t> in_rank(static_cast<std::size_t>(data.num_tokens * R));
    device_layout.compute(topk.data, data.num_tokens, scenario.num_topk, scenario.num_experts, R,
                          scenario.local_size, 4,
                          {per_rank.data, per_node.data, per_expert.data, in_rank.data}, nullptr);
    cuda_ok(cudaDeviceSynchronize(), "layout");
    REQUIRE_NOTHROW(device_layout.check());
    CHECK(download(per_rank.data, R) == want.tokens_per_rank);
    CHECK(download(per_node.data, 4) == want.tokens_per_node);
    CHECK(download(per_expert.data, per_expert.count) == want.tokens_per_expert);
    CHECK(download(in_rank.data, in_rank.count) == want.is_token_in_rank);
  }
  std::vector<std::int64_t> bad = {0, 1, 2, 99, 3, 3};
  DeviceCopy<std::int64_t> topk(bad);
  DeviceCopy<std::int64_t> per_rank(4), per_node(2), per_expert(8);
  DeviceCopy<std::uint8_t> in_rank(8);
  device_layout.compute(topk.data, 2, 3, 8, 4, 2, 2,
                        {per_rank.data, per_node.data, per_expert.data, in_rank.data}, nullptr);
  cuda_ok(cudaDeviceSynchronize(), "layout");
  REQUIRE_THROWS_WITH(device_layout.check(),
                      Catch::Contains("is out of range") || Catch::Contains("names expert 3 twice"));
}

TEST_CASE("a stalled peer on the GPU gives a timeout record that names it", "[gpu][timing]") {
  auto rng = seeded("gpu stall");
  ScenarioShape shape;
  shape.num_nodes = 2;
  shape.local_size = 2;
  shape.experts_per_rank = 2;
  shape.num_topk = 4;
  shape.hidden = 256;
  shape.max_tokens = 64;
  Scenario scenario = make_scenario(shape, rng);
  for (RankData& data : scenario.ranks) {  // every token to every rank
    data.num_tokens = 32;
    data.topk.clear();
    for (int t = 0; t < 32; ++t) data.topk.insert(data.topk.end(), {0, 2, 4, 6});
    data.weights.assign(128, 0.25f);
  }
  fill_rows(scenario, rng);
  Setup setup;
  setup.num_sms = 2;
  setup.timeout = std::chrono::milliseconds(2000);
  kc::VirtualCluster cluster(params_of(scenario, setup, 256), options_of(setup));
  DeviceInputs inputs(scenario);
  kc::DeviceDispatchShape dispatch_shape = shape_of(scenario);
  auto first = cluster.engine().dispatch(dispatch_shape, inputs.inputs, nullptr, nullptr);
  cluster.engine().finish(nullptr, &first);
  std::vector<std::shared_ptr<kc::DeviceRecord>> records;
  for (const auto& result : first) records.push_back(result.record);
  dispatch_shape.absent_rank = 3;
  const auto start = std::chrono::steady_clock::now();
  auto again = cluster.engine().dispatch(dispatch_shape, inputs.inputs, &records, nullptr);
  try {
    cluster.engine().finish(nullptr, &again);
    FAIL("no timeout was raised");
  } catch (const Error& error) {
    INFO(error.what());
    CHECK(error.code() == Errc::timeout);
    CHECK(std::string(error.what()).find("no progress for 2.00 s") != std::string::npos);
    CHECK(std::string(error.what()).find("waits for peer rank") != std::string::npos);
    CHECK(std::string(error.what()).find("head ") != std::string::npos);
  }
  CHECK(std::chrono::steady_clock::now() - start < std::chrono::seconds(30));
}

// What the graph test keeps of one replay: every rank's dispatch outputs and combine outputs, as bytes.
struct Replay {
  std::vector<std::vector<std::uint8_t>> recv_x, out;
  std::vector<std::vector<std::int64_t>> recv_topk_idx;
  std::vector<std::vector<float>> recv_topk_weights, out_weights;
};

TEST_CASE("a worst-case dispatch and combine captured in a CUDA graph replay to identical results",
          "[gpu][graph]") {
  // First: destroyed after everything that frees on it. Not ordered after the legacy stream (a captured
  // stream must not be).
  const OwnedStream owned_stream(cudaStreamNonBlocking);
  const cudaStream_t stream = owned_stream.get();
  auto rng = seeded("gpu graph");
  // 2x2: node peers through device pointers and inter-node puts through the proxy, both replayed.
  Scenario scenario = random_scenario(rng, 2, 2, 64, DType::bf16);
  const int R = scenario.num_ranks();
  const int K = scenario.num_topk;
  Setup setup;
  kc::VirtualCluster cluster(params_of(scenario, setup, scenario.hidden), options_of(setup));
  DeviceInputs inputs(scenario);
  const auto sources = expected_sources(scenario);
  std::int64_t worst = 0;
  for (const auto& rows : sources)
    worst = std::max<std::int64_t>(worst, static_cast<std::int64_t>(rows.size()));
  worst += 5;
  const std::size_t row_bytes = scenario.row_bytes();

  // Every output lives outside the graph, allocated before the capture: each replay writes the same memory.
  std::vector<std::unique_ptr<DeviceCopy<std::uint8_t>>> recv_x, y, out;
  std::vector<std::unique_ptr<DeviceCopy<std::int64_t>>> recv_ids;
  std::vector<std::unique_ptr<DeviceCopy<float>>> recv_weights, out_weights;
  const auto results_rows = make_results(scenario, sources, DType::bf16, worst, rng);
  for (int r = 0; r < R; ++r) {
    const auto rows = static_cast<std::size_t>(worst);
    recv_x.push_back(std::make_unique<DeviceCopy<std::uint8_t>>(rows * row_bytes));
    recv_ids.push_back(std::make_unique<DeviceCopy<std::int64_t>>(rows * K));
    recv_weights.push_back(std::make_unique<DeviceCopy<float>>(rows * K));
    y.push_back(std::make_unique<DeviceCopy<std::uint8_t>>(results_rows[r]));
    out.push_back(std::make_unique<DeviceCopy<std::uint8_t>>(scenario.ranks[r].num_tokens * row_bytes));
    out_weights.push_back(
        std::make_unique<DeviceCopy<float>>(static_cast<std::size_t>(scenario.ranks[r].num_tokens * K)));
    kc::DeviceOutputs outputs;
    outputs.recv_x = reinterpret_cast<std::byte*>(recv_x[r]->data);
    outputs.recv_topk_idx = recv_ids[r]->data;
    outputs.recv_topk_weights = recv_weights[r]->data;
    inputs.inputs[r].allocate = [outputs, worst](std::int64_t rows) {
      if (rows != worst) fail(Errc::internal, "the engine asked for " + std::to_string(rows) + " rows");
      return outputs;
    };
  }
  kc::DeviceDispatchShape shape = shape_of(scenario);
  shape.num_worst_tokens = worst;

  cuda_ok(cudaDeviceSynchronize(), "the uploads");  // on the legacy stream, which this stream does not follow
  cudaGraph_t graph = nullptr;
  // Global, as frameworks capture by default: the engine relaxes the mode itself for its set-up off the
  // captured stream (plans and records allocated outside the graph, on its own stream).
  cuda_ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
  std::vector<kc::DeviceDispatchResult> results;
  try {
    results = cluster.engine().dispatch(shape, inputs.inputs, nullptr, stream);
    std::vector<kc::DeviceCombineInput> combine(R);
    for (int r = 0; r < R; ++r) {
      combine[r].y = reinterpret_cast<const std::byte*>(y[r]->data);
      combine[r].y_weights = recv_weights[r]->data;
      combine[r].out = reinterpret_cast<std::byte*>(out[r]->data);
      combine[r].out_weights = out_weights[r]->data;
      combine[r].record = results[r].record;
    }
    kc::DeviceCombineShape combine_shape;
    combine_shape.kind = p::PayloadKind::bf16;
    combine_shape.hidden = scenario.hidden;
    combine_shape.fingerprint = 0x5eed;
    cluster.engine().combine(combine_shape, combine, stream);
  } catch (...) {
    cudaStreamEndCapture(stream, &graph);  // leaves the stream usable; the error is the test's
    if (graph != nullptr) cudaGraphDestroy(graph);
    throw;
  }
  cuda_ok(cudaStreamEndCapture(stream, &graph), "cudaStreamEndCapture");
  std::unique_ptr<CUgraph_st, decltype(&cudaGraphDestroy)> graph_owner(graph, cudaGraphDestroy);
  cudaGraphExec_t exec = nullptr;
  cuda_ok(cudaGraphInstantiate(&exec, graph, 0), "cudaGraphInstantiate");
  std::unique_ptr<CUgraphExec_st, decltype(&cudaGraphExecDestroy)> exec_owner(exec, cudaGraphExecDestroy);

  auto replay = [&](const Scenario& expected_scenario) {
    for (int r = 0; r < R; ++r) {  // poisoned, so a replay that writes nothing cannot pass
      for (DeviceCopy<std::uint8_t>* poisoned : {recv_x[r].get(), out[r].get()}) {
        if (poisoned->count > 0)
          cuda_ok(cudaMemsetAsync(poisoned->data, 0xab, poisoned->count, stream), "poison the outputs");
      }
    }
    cuda_ok(cudaGraphLaunch(exec, stream), "cudaGraphLaunch");
    cluster.engine().finish(stream, &results);
    Replay got;
    for (int r = 0; r < R; ++r) {
      kc::DeviceDispatchResult view = results[r];
      view.recv_x = reinterpret_cast<std::byte*>(recv_x[r]->data);
      view.recv_topk_idx = recv_ids[r]->data;
      view.recv_topk_weights = recv_weights[r]->data;
      view.rows = worst;
      const std::string diff = check_rank(expected_scenario, sources[r], r, view, true);
      INFO(diff);
      REQUIRE(diff.empty());
      got.recv_x.push_back(download(recv_x[r]->data, recv_x[r]->count));
      got.recv_topk_idx.push_back(download(recv_ids[r]->data, recv_ids[r]->count));
      got.recv_topk_weights.push_back(download(recv_weights[r]->data, recv_weights[r]->count));
      got.out.push_back(download(out[r]->data, out[r]->count));
      got.out_weights.push_back(download(out_weights[r]->data, out_weights[r]->count));
    }
    return got;
  };

  const Replay first = replay(scenario);
  // Combine sums the rows every rank returned with the weights it received (the reference's weights cover
  // the received rows only).
  std::vector<std::vector<float>> received_weights(R);
  for (int r = 0; r < R; ++r) {
    received_weights[r].assign(first.recv_topk_weights[r].begin(),
                               first.recv_topk_weights[r].begin() + sources[r].size() * K);
  }
  const auto expected = expected_combine(scenario, sources, results_rows, DType::bf16);
  const auto expected_weights = expected_combined_weights(scenario, sources, received_weights);
  for (int r = 0; r < R; ++r) {
    INFO("rank " << r);
    REQUIRE(first.out[r] == expected[r]);
    REQUIRE(std::memcmp(first.out_weights[r].data(), expected_weights[r].data(),
                        first.out_weights[r].size() * sizeof(float)) == 0);
  }
  const Replay second = replay(scenario);
  CHECK(second.recv_x == first.recv_x);
  CHECK(second.recv_topk_idx == first.recv_topk_idx);
  CHECK(second.recv_topk_weights == first.recv_topk_weights);
  CHECK(second.out == first.out);
  CHECK(second.out_weights == first.out_weights);

  // New rows in the same input memory: the replay reads the input at replay time, not at capture.
  Scenario renewed = scenario;
  fill_rows(renewed, rng);
  for (int r = 0; r < R; ++r) {
    if (!renewed.ranks[r].x.empty()) {
      cuda_ok(cudaMemcpy(inputs.x[r]->data, renewed.ranks[r].x.data(), renewed.ranks[r].x.size(),
                         cudaMemcpyHostToDevice),
              "upload new rows");
    }
  }
  cuda_ok(cudaDeviceSynchronize(), "the new rows");
  const Replay third = replay(renewed);
  CHECK(third.out == first.out);  // combine's rows did not change
}

TEST_CASE("during a CUDA graph capture, what would wait on the host is refused by name", "[gpu][graph]") {
  const OwnedStream owned_stream(cudaStreamNonBlocking);  // first: destroyed after what frees on it
  const cudaStream_t stream = owned_stream.get();
  auto rng = seeded("gpu graph refusals");
  Scenario scenario = random_scenario(rng, 1, 2, 16, DType::bf16);
  Setup setup;
  setup.num_sms = 2;
  kc::VirtualCluster cluster(params_of(scenario, setup, scenario.hidden), options_of(setup));
  DeviceInputs inputs(scenario);
  cuda_ok(cudaDeviceSynchronize(), "the uploads");
  cuda_ok(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal), "cudaStreamBeginCapture");
  std::string sized_by_counts, finish;
  try {
    cluster.engine().dispatch(shape_of(scenario), inputs.inputs, nullptr, stream);  // no num_worst_tokens
  } catch (const Error& error) {
    sized_by_counts = error.what();
  }
  try {
    cluster.engine().finish(stream);
  } catch (const Error& error) {
    finish = error.what();
  }
  cudaGraph_t graph = nullptr;
  const cudaError_t ended = cudaStreamEndCapture(stream, &graph);  // nothing was enqueued: still valid
  if (graph != nullptr) cudaGraphDestroy(graph);
  CHECK(ended == cudaSuccess);
  CHECK_THAT(sized_by_counts, Catch::Contains("needs worst-case sizing (num_worst_tokens > 0)"));
  CHECK_THAT(finish, Catch::Contains("is being captured into a CUDA graph"));
  // The engine is unharmed: a dispatch outside the capture runs and is right.
  const auto sources = expected_sources(scenario);
  auto results = cluster.engine().dispatch(shape_of(scenario), inputs.inputs, nullptr, stream);
  cluster.engine().finish(stream, &results);
  for (int r = 0; r < scenario.num_ranks(); ++r) {
    const std::string diff = check_rank(scenario, sources[r], r, results[r], true);
    INFO(diff);
    CHECK(diff.empty());
  }
}
