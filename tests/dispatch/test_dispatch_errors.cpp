// Every error a Buffer can report names its offender: bad configs, shapes and types, routing out of range or
// over the node limit, ranks that disagree about the operation, and a peer that stops (deadline, naming rank,
// channel, stage, peer, head and tail). After a failure the Buffer refuses further work.
#include <catch2/catch.hpp>
#include <chrono>
#include <limits>
#include <memory>
#include <vector>

#include "cluster_run.hpp"
#include "ferry/buffer.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/host/engine.hpp"
#include "ferry/kernels/host/local_world.hpp"

using namespace ferry;
using namespace std::chrono_literals;

namespace {

Errc code_of(const std::function<void()>& body) {
  try {
    body();
  } catch (const Error& error) {
    return error.code();
  }
  FAIL("no ferry::Error was thrown");
  return Errc::internal;
}

Config tiny_config() {
  Config config;
  config.num_sms = 4;
  config.max_hidden = 256;
  config.max_topk = 4;
  config.rdma_ring_slots = 4;
  config.rdma_chunk = 2;
  config.nvl_ring_slots = 4;
  config.nvl_chunk = 2;
  config.host_workers = 1;
  config.timeout = 10s;
  return config;
}

// One rank's inputs: T tokens of hidden H, each to experts {t % E, (t + 1) % E}.
struct Inputs {
  Inputs(std::int64_t tokens, std::int64_t hidden, std::int64_t experts, DType dtype = DType::bf16)
      : x(tokens * hidden * element_size(dtype), 1), topk(tokens * 2), weights(tokens * 2, 0.5f) {
    for (std::int64_t t = 0; t < tokens; ++t) {
      topk[t * 2] = t % experts;
      topk[t * 2 + 1] = (t + 1) % experts;
    }
    in.x = TensorView(x.data(), {tokens, hidden}, dtype);
    in.topk_idx = TensorView(topk.data(), {tokens, 2}, DType::int64);
    in.topk_weights = TensorView(weights.data(), {tokens, 2}, DType::fp32);
  }
  std::vector<std::uint8_t> x;
  std::vector<std::int64_t> topk;
  std::vector<float> weights;
  DispatchInputs in;
};

}  // namespace

TEST_CASE("configs that cannot work are refused by name", "[unit]") {
  auto refuse = [](auto change, const char* text) {
    Config config = tiny_config();
    change(config);
    REQUIRE_THROWS_WITH(LocalCluster(2, 2, config), Catch::Contains(text));
  };
  refuse([](Config& c) { c.num_sms = 3; }, "Config::num_sms = 3");
  refuse([](Config& c) { c.rdma_ring_slots = 6; }, "Config::rdma_ring_slots = 6 must be a power of two");
  refuse([](Config& c) { c.nvl_chunk = 5; }, "Config::nvl_chunk = 5");
  refuse([](Config& c) { c.max_topk = 0; }, "Config::max_topk = 0");
  refuse([](Config& c) { c.timeout = 0s; }, "Config::timeout");
  refuse([](Config& c) { c.buffer_bytes = 4096; },
         "Config::buffer_bytes = 4096 is too small for this config");
  REQUIRE_THROWS_WITH(LocalCluster(2, 33, tiny_config()), Catch::Contains("33 ranks per node"));
  Config config = tiny_config();
  config.buffer_bytes = buffer_size_hint(config, 2, 2);
  REQUIRE_NOTHROW(LocalCluster(2, 2, config));
  CHECK(buffer_size_hint(config, 2, 2) < buffer_size_hint(config, 4, 2));
}

TEST_CASE("an engine refuses a registered buffer smaller than its layout", "[unit]") {
  kernels::protocol::LayoutParams params;
  params.topo = {1, 2, 2};
  params.max_hidden = 64;
  params.max_topk = 2;
  params.rdma_slots = 2;
  params.nvl_slots = 2;
  kernels::host::LocalWorld world(kernels::protocol::make_buffer_layout(params));
  kernels::host::RankMemory memory = world.memory(0);
  memory.bytes = world.layout().total_bytes - 1;
  REQUIRE_THROWS_WITH(
      kernels::host::Engine(0, world.layout(), memory, {}),
      Catch::Contains("rank 0's buffer has") && Catch::Contains("bytes but the config needs"));
}

TEST_CASE("a rank has one Buffer at a time", "[unit]") {
  LocalCluster cluster(1, 2, tiny_config());
  auto first = std::make_unique<Buffer>(cluster, 1);
  REQUIRE_THROWS_WITH(Buffer(cluster, 1),
                      Catch::Contains("rank 1 of this LocalCluster already has a Buffer"));
  REQUIRE_THROWS_WITH(Buffer(cluster, 2), Catch::Contains("rank 2 is not in this LocalCluster of 2 ranks"));
  first.reset();
  REQUIRE_NOTHROW(Buffer(cluster, 1));
}

TEST_CASE("dispatch and combine name wrong shapes and types", "[unit]") {
  LocalCluster cluster(1, 1, tiny_config());
  Buffer buffer(cluster, 0);
  Inputs good(4, 64, 4);
  Layout layout = buffer.get_layout(good.in.topk_idx, 4);
  auto refuse = [&](DispatchInputs in, const char* text) {
    REQUIRE_THROWS_WITH(buffer.dispatch(in, layout), Catch::Contains(text));
    CHECK(code_of([&] { buffer.dispatch(in, layout); }) == Errc::invalid_argument);
  };
  DispatchInputs in = good.in;
  in.x = TensorView(good.x.data(), {256}, DType::bf16);
  refuse(in, "x must be a 2-D tensor, not [256] bf16");
  in = good.in;
  in.x = TensorView(good.x.data(), {4, 64}, DType::int64);
  refuse(in, "x must be bf16, fp32 or fp8_e4m3, not [4, 64] int64");
  std::vector<std::uint8_t> wide(4 * 300 * 2);
  in.x = TensorView(wide.data(), {4, 300}, DType::bf16);
  refuse(in, "Config::max_hidden = 256");
  in = good.in;
  in.x = TensorView(good.x.data(), {4, 64}, DType::fp8_e4m3);
  refuse(in, "x_scales is missing");
  std::vector<float> scales(8);
  in.x_scales = TensorView(scales.data(), {4, 2}, DType::fp32);
  refuse(in, "x_scales must be [4, 1] fp32");
  in = good.in;
  in.x_scales = TensorView(scales.data(), {4, 1}, DType::fp32);
  refuse(in, "scales go only with fp8_e4m3");
  in = good.in;
  in.topk_idx = TensorView(good.topk.data(), {3, 2}, DType::int64);
  refuse(in, "topk_idx must be [4, K] int64");
  in = good.in;
  in.topk_weights = TensorView(good.weights.data(), {4, 2}, DType::bf16);
  refuse(in, "topk_weights must be [4, 2] fp32");
  in = good.in;
  in.x = TensorView(good.x.data(), {4, 64}, DType::bf16, Device::cuda);
  refuse(in, "runs the host backend");

  Inputs other(5, 64, 4);
  REQUIRE_THROWS_WITH(buffer.dispatch(other.in, layout),
                      Catch::Contains("the layout was computed for 4 tokens"));

  // The layout routes; ids that do not fit it fail the dispatch by name instead of travelling.
  good.topk[3] = 7;
  REQUIRE_THROWS_WITH(buffer.dispatch(good.in, layout).wait(),
                      Catch::Contains("token 1 has expert id 7, outside [0, 4)"));
  good.topk[3] = 1;
  REQUIRE_THROWS_WITH(buffer.dispatch(good.in, layout).wait(),
                      Catch::Contains("not run because an earlier one"));
}

TEST_CASE("bad inputs are refused at the call, before anything runs", "[unit]") {
  LocalCluster cluster(1, 1, tiny_config());
  Buffer buffer(cluster, 0);
  Inputs good(4, 64, 4);
  Layout layout = buffer.get_layout(good.in.topk_idx, 4);
  good.weights[5] = std::numeric_limits<float>::quiet_NaN();
  REQUIRE_THROWS_WITH(buffer.dispatch(good.in, layout),
                      Catch::Contains("topk_weights[2][1] = nan is not a finite"));
  good.weights[5] = std::numeric_limits<float>::infinity();
  REQUIRE_THROWS_WITH(buffer.dispatch(good.in, layout), Catch::Contains("topk_weights[2][1] = inf"));
  good.weights[5] = 0.5f;
  good.topk[2] = good.topk[3];
  REQUIRE_THROWS_WITH(buffer.get_layout(good.in.topk_idx, 4),
                      Catch::Contains("token 1 names expert 2 twice"));
  REQUIRE_THROWS_WITH(buffer.get_layout(good.in.topk_idx, 1),
                      Catch::Contains("2 slots per token but there are only 1"));
  good.topk[2] = 1;
  Layout broken = layout;
  broken.is_token_in_rank.pop_back();
  REQUIRE_THROWS_WITH(buffer.dispatch(good.in, broken), Catch::Contains("is_token_in_rank has 3 entries"));
  Layout from_gpu = layout;  // as a CUDA Buffer's get_layout leaves it (here a host tensor stands in)
  from_gpu.is_token_in_rank_device = Tensor({4, 1}, DType::uint8);
  REQUIRE_THROWS_WITH(buffer.dispatch(good.in, from_gpu),
                      Catch::Contains("computed on the GPU") && Catch::Contains("runs the host backend"));
  DispatchOptions options;
  options.expert_alignment = 0;
  REQUIRE_THROWS_WITH(buffer.dispatch(good.in, layout, options),
                      Catch::Contains("expert_alignment must be >= 1"));

  DispatchResult result = std::move(buffer.dispatch(good.in, layout).wait());
  const std::int64_t rows = result.handle.recv_rows();
  std::vector<float> y(rows * 64);
  std::vector<float> weights(rows * 2);
  CombineOptions combine;
  combine.topk_weights = TensorView(weights.data(), {rows, 3}, DType::fp32);
  REQUIRE_THROWS_WITH(
      buffer.combine(TensorView(y.data(), {rows, 64}, DType::fp32), result.handle, combine),
      Catch::Contains("combine's topk_weights must be [" + std::to_string(rows) + ", 2] fp32"));
  combine.topk_weights = {};
  combine.bias = TensorView(y.data(), {4, 64}, DType::bf16);
  REQUIRE_THROWS_WITH(buffer.combine(TensorView(y.data(), {rows, 64}, DType::fp32), result.handle, combine),
                      Catch::Contains("combine's bias must be [4, 64] fp32"));
  Config call = buffer.config();
  call.max_hidden = 128;
  REQUIRE_THROWS_WITH(
      buffer.dispatch(good.in, layout, {.config = call}),
      Catch::Contains("per-call Config has max_hidden = 128 but the Buffer was built with 256"));
  call = buffer.config();
  call.num_sms = 8;
  REQUIRE_THROWS_WITH(buffer.dispatch(good.in, layout, {.config = call}),
                      Catch::Contains("at most the Buffer's 4"));
  call.num_sms = 2;
  REQUIRE_THROWS_WITH(
      buffer.combine(TensorView(y.data(), {rows, 64}, DType::fp32), result.handle, {.config = call}),
      Catch::Contains("this handle's dispatch ran with num_sms = 4"));
}

TEST_CASE("shapes of combine and cached dispatch are checked", "[unit]") {
  LocalCluster cluster(1, 1, tiny_config());
  Buffer buffer(cluster, 0);
  Inputs good(4, 64, 4);
  Inputs other(5, 64, 4);
  Layout layout = buffer.get_layout(good.in.topk_idx, 4);

  DispatchResult result = std::move(buffer.dispatch(good.in, layout).wait());
  std::vector<float> y(result.handle.recv_rows() * 64);
  REQUIRE_THROWS_WITH(
      buffer.combine(TensorView(y.data(), {result.handle.recv_rows() + 1, 64}, DType::fp32), result.handle),
      Catch::Contains("y must have one row per received row"));
  REQUIRE_THROWS_WITH(
      buffer.combine(TensorView(y.data(), {result.handle.recv_rows(), 64}, DType::fp8_e4m3), result.handle),
      Catch::Contains("y must be bf16 or fp32"));
  REQUIRE_THROWS_WITH(
      buffer.combine(TensorView(y.data(), {result.handle.recv_rows(), 64}, DType::fp32), Handle{}),
      Catch::Contains("the handle is empty"));
  REQUIRE_THROWS_WITH(buffer.dispatch(other.in.x, {}, result.handle),
                      Catch::Contains("the handle's dispatch had 4 tokens"));
  REQUIRE_NOTHROW(
      buffer.combine(TensorView(y.data(), {result.handle.recv_rows(), 64}, DType::fp32), result.handle)
          .wait());
}

TEST_CASE("a handle works only on the rank that made it", "[unit]") {
  LocalCluster cluster(1, 2, tiny_config());
  Buffer rank0(cluster, 0), rank1(cluster, 1);
  Inputs in0(3, 16, 4), in1(3, 16, 4);
  auto p0 = rank0.dispatch(in0.in, rank0.get_layout(in0.in.topk_idx, 4));
  auto p1 = rank1.dispatch(in1.in, rank1.get_layout(in1.in.topk_idx, 4));
  Handle handle0 = p0.wait().handle;
  p1.wait();
  REQUIRE_THROWS_WITH(rank1.dispatch(in1.in.x, {}, handle0),
                      Catch::Contains("the handle belongs to rank 0, not to rank 1"));
}

TEST_CASE("ranks that disagree about the operation fail loudly", "[unit]") {
  LocalCluster cluster(2, 1, tiny_config());
  Buffer rank0(cluster, 0), rank1(cluster, 1);
  Inputs narrow(4, 32, 4), wide(4, 64, 4);
  auto p0 = rank0.dispatch(narrow.in, rank0.get_layout(narrow.in.topk_idx, 4));
  auto p1 = rank1.dispatch(wide.in, rank1.get_layout(wide.in.topk_idx, 4));
  REQUIRE_THROWS_WITH(p0.wait(), Catch::Contains("rank 0 notify stage notify-receive") &&
                                     Catch::Contains("hidden size 64 from peer rank 1") &&
                                     Catch::Contains("this rank uses 32"));
  REQUIRE_THROWS_WITH(p1.wait(), Catch::Contains("hidden size 32 from peer rank 0"));
  CHECK(code_of([&] { p0.wait(); }) == Errc::protocol);
  // The rings are now in an unknown state: the buffer refuses further work, quoting the first failure.
  auto next = rank0.dispatch(narrow.in, rank0.get_layout(narrow.in.topk_idx, 4));
  REQUIRE_THROWS_WITH(next.wait(), Catch::Contains("not run because an earlier one failed") &&
                                       Catch::Contains("hidden size 64"));
}

TEST_CASE("a peer that never joins the notify step times out by name", "[unit]") {
  Config config = tiny_config();
  config.timeout = 1s;
  LocalCluster cluster(2, 2, config);
  std::vector<std::unique_ptr<Buffer>> buffers;
  for (int r = 0; r < 4; ++r) buffers.push_back(std::make_unique<Buffer>(cluster, r));
  std::vector<Inputs> inputs;
  for (int r = 0; r < 4; ++r) inputs.emplace_back(6, 32, 8);
  std::vector<Pending<DispatchResult>> pending;
  for (int r = 0; r < 3; ++r) {  // rank 3 stays away
    pending.push_back(buffers[r]->dispatch(inputs[r].in, buffers[r]->get_layout(inputs[r].in.topk_idx, 8)));
  }
  for (int r = 0; r < 3; ++r) {
    INFO("rank " << r);
    REQUIRE_THROWS_WITH(pending[r].wait(),
                        Catch::Contains("rank " + std::to_string(r) + " notify: no progress for 1.00 s") &&
                            Catch::Contains("waits for peer rank 3") && Catch::Contains("head 0, tail 0"));
    CHECK(code_of([&] { pending[r].wait(); }) == Errc::timeout);
  }
}

TEST_CASE("a peer that stops in the middle of a dispatch times out by name", "[unit]") {
  Config config = tiny_config();
  config.timeout = 1s;
  test::Scenario scenario;
  scenario.num_nodes = 2;
  scenario.local_size = 2;
  scenario.num_experts = 4;
  scenario.num_topk = 4;
  scenario.hidden = 32;
  scenario.ranks.resize(4);
  for (auto& data : scenario.ranks) {  // every token to every rank
    data.num_tokens = 12;
    data.x.assign(12 * 32 * 2, 3);
    data.topk.clear();
    for (int t = 0; t < 12; ++t) data.topk.insert(data.topk.end(), {0, 1, 2, 3});
    data.weights.assign(48, 0.25f);
  }
  test::ClusterRun run(scenario, config);
  auto first = run.dispatch(scenario);
  // Cached dispatch on ranks 0-2 only: no notify step, so they stall in the data path waiting for rank 3.
  std::vector<Pending<DispatchResult>> pending;
  for (int r = 0; r < 3; ++r) {
    const auto& data = scenario.ranks[r];
    pending.push_back(
        run.buffers[r]->dispatch(TensorView(data.x.data(), {12, 32}, DType::bf16), {}, first[r].handle));
  }
  for (int r = 0; r < 3; ++r) {
    INFO("rank " << r);
    REQUIRE_THROWS_WITH(pending[r].wait(), Catch::Contains("channel") &&
                                               Catch::Contains("no progress for 1.00 s") &&
                                               Catch::Contains("stage dispatch-") &&
                                               Catch::Contains("head ") && Catch::Contains("tail "));
  }
  // Rank 3's rail partner (rank 1) waits for its tokens; its node peer (rank 2) for room in its rings.
  REQUIRE_THROWS_WITH(pending[1].wait(),
                      Catch::Contains("dispatch-forward waits for peer rank 3 to publish into "
                                      "this rank's dispatch_rdma ring"));
  REQUIRE_THROWS_WITH(pending[2].wait(),
                      Catch::Contains("waits for peer rank 3") && Catch::Contains("dispatch_direct ring"));
}
