// The assembled model: MTP module and the whole model end-to-end against finite differences in double, the
// float model against the double one, the exchange seam, and config validation.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/model/footprint.hpp"
#include "ferry/model/model.hpp"
#include "ferry/model/mtp.hpp"
#include "grad_check.hpp"
#include "model_fixtures.hpp"

using namespace ferry::model;
using namespace ferry::model::testing;

namespace {

// Small enough for finite differences over every parameter, big enough to have every feature: a dense and an
// MoE block, node-limited routing (2 groups, 1 allowed), shared expert, MTP with an MoE block, and weights
// (init_std 0.3) large enough that attention and gates are far from uniform.
ModelConfig tiny_config() {
  ModelConfig c;
  c.vocab = 16;
  c.seq = 4;
  c.layers = 2;
  c.n_dense = 1;
  c.dim = 8;
  c.heads = 2;
  c.ffn_hidden = 8;
  c.experts = 4;
  c.topk = 2;
  c.groups = 2;
  c.max_groups = 1;
  c.expert_hidden = 4;
  c.route_scale = 1.5;
  c.balance_alpha = 0.1;
  c.mtp = true;
  c.mtp_lambda = 0.5;
  c.init_std = 0.3;
  c.init_seed = 21;
  return c;
}

// Checks every tensor of the store, by name, against finite differences of f.
void check_all_params(ParamStore<double>& store, const std::function<double()>& f) {
  for (const ParamInfo& p : store.info()) {
    const GradCheck c =
        check_gradient(store.values().data() + p.offset, p.size, store.grads().data() + p.offset, f);
    INFO(p.name << ": relative error " << c.relative_error << " over " << c.checked
                << " coordinates, |numeric| " << c.numeric_norm);
    CHECK(c.numeric_norm > 0);
    CHECK(c.relative_error < kGradTolerance);
  }
}

// Counts the traffic through the seam and, per expert, the (token, slot) pairs its last dispatch was handed,
// then forwards to the local implementation.
class CountingExchange final : public ExpertExchange<float> {
 public:
  CountingExchange(int experts, int* dispatches, int* combines, std::vector<std::int64_t>* routed = nullptr)
      : local_(experts), dispatches_(dispatches), combines_(combines), routed_(routed) {}
  int num_experts() const override { return local_.num_experts(); }
  int first_local_expert() const override { return 0; }
  int num_local_experts() const override { return local_.num_local_experts(); }
  std::unique_ptr<ExchangeHandle> dispatch(const float* x, int dim, const int* expert, const float* weight,
                                           int tokens, int topk, ExpertBatch<float>& received) override {
    ++*dispatches_;
    if (routed_ != nullptr) {
      routed_->assign(local_.num_experts(), 0);
      for (int i = 0; i < tokens * topk; ++i) {
        if (expert[i] >= 0) ++(*routed_)[expert[i]];
      }
    }
    return local_.dispatch(x, dim, expert, weight, tokens, topk, received);
  }
  void combine(const ExchangeHandle& h, const float* rows, float* y) override {
    ++*combines_;
    local_.combine(h, rows, y);
  }
  void combine_backward(const ExchangeHandle& h, const float* dy, float* drows) override {
    local_.combine_backward(h, dy, drows);
  }
  void dispatch_backward(const ExchangeHandle& h, const float* dx_rows, const float* dw_rows, float* dx,
                         float* dweight) override {
    local_.dispatch_backward(h, dx_rows, dw_rows, dx, dweight);
  }

 private:
  LocalExpertExchange<float> local_;
  int* dispatches_;
  int* combines_;
  std::vector<std::int64_t>* routed_;
};

}  // namespace

TEST_CASE("MTP module backward matches finite differences (through h, wte and its own block)",
          "[model][grad]") {
  const ModelConfig config = tiny_config();
  const int B = 2, n = B * config.seq, C = config.dim;
  ParamStore<double> store;
  const ParamRef wte = store.add("wte", {config.vocab, C}, ParamInit::normal, config.init_std);
  MtpModule<double> mtp(config, store, std::make_unique<LocalExpertExchange<double>>(config.experts));
  store.allocate();
  store.initialize(31);
  Rng rng(32);
  auto h = random_vector(n * C, rng), r = random_vector(n * C, rng);
  const std::vector<int> next = {1, 5, 5, 0, 15, 3, 9, 1};
  std::vector<double> out(n * C);
  auto f = [&] {
    const double balance = mtp.forward(out.data(), h.data(), next.data(), store.value(wte), B, store);
    return dot(out, r) + balance;
  };
  f();
  mtp.block().moe()->set_routing_frozen(true);
  std::vector<double> dh(n * C, 0);
  mtp.backward(dh.data(), store.grad(wte), r.data(), h.data(), store);
  const GradCheck ch = check_gradient(h, dh, f);
  INFO("h: relative error " << ch.relative_error);
  CHECK(ch.relative_error < kGradTolerance);
  check_all_params(store, f);
}

TEST_CASE("whole model backward matches finite differences end to end", "[model][grad]") {
  const ModelConfig config = tiny_config();
  const int B = 2;
  const auto tokens = random_tokens(config, B, 41);
  Model<double> model(config);
  model.forward(tokens.data(), B);
  INFO("selection margin " << model.selection_margin());
  // Selection is frozen for the probes; the margin shows it would not have flipped anyway.
  REQUIRE(model.selection_margin() > 1e-4);
  model.set_routing_frozen(true);
  model.zero_grad();
  model.forward(tokens.data(), B);
  REQUIRE(model.losses().mtp > 0);
  REQUIRE(model.losses().balance > 0);
  model.backward();
  check_all_params(model.params(), [&] { return static_cast<double>(model.forward(tokens.data(), B)); });
}

TEST_CASE("the float model tracks the double model: losses and gradients", "[model]") {
  ModelConfig config = tiny_config();
  config.vocab = 256;
  config.seq = 8;
  config.dim = 16;
  const int B = 3;
  const auto tokens = random_tokens(config, B, 51);
  Model<float> mf(config);
  Model<double> md(config);  // the same seed: both start from the same float-rounded weights
  mf.forward(tokens.data(), B);
  md.forward(tokens.data(), B);
  for (std::size_t l = 0; l < mf.moe_layers().size(); ++l)
    REQUIRE(mf.moe_layers()[l]->routing() == md.moe_layers()[l]->routing());
  REQUIRE(mf.losses().total == Approx(md.losses().total).epsilon(1e-5));
  REQUIRE(mf.losses().main == Approx(md.losses().main).epsilon(1e-5));
  REQUIRE(mf.losses().mtp == Approx(md.losses().mtp).epsilon(1e-5));
  REQUIRE(mf.losses().balance == Approx(md.losses().balance).epsilon(1e-4));
  mf.backward();
  md.backward();
  for (const ParamInfo& p : md.params().info()) {
    double diff = 0, norm = 0;
    for (std::size_t i = p.offset; i < p.offset + p.size; ++i) {
      const double d = md.params().grads()[i], f = mf.params().grads()[i];
      diff += (d - f) * (d - f);
      norm += d * d;
    }
    INFO(p.name);
    CHECK(std::sqrt(diff) <= 1e-4 * std::sqrt(norm));
  }
}

TEST_CASE("forward is deterministic and every MoE layer goes through its exchange", "[model]") {
  ModelConfig config = tiny_config();
  config.vocab = 256;
  const int B = 2;
  int dispatches = 0, combines = 0;
  std::vector<std::vector<std::int64_t>> routed(config.moe_layer_count());
  Model<float> model(config, [&](int moe_index, int experts) {
    return std::make_unique<CountingExchange>(experts, &dispatches, &combines, &routed.at(moe_index));
  });
  REQUIRE(config.moe_layer_count() == 2);  // block 1 and the MTP block
  const auto tokens = random_tokens(config, B, 61);
  const float first = model.forward(tokens.data(), B);
  const float second = model.forward(tokens.data(), B);
  REQUIRE(std::memcmp(&first, &second, sizeof first) == 0);
  REQUIRE(dispatches == 4);
  REQUIRE(combines == 4);
  // Each layer's load is what its exchange was handed, expert by expert, and every token used all its slots.
  const auto loads = model.expert_loads();
  REQUIRE(loads.size() == 2);
  for (std::size_t layer = 0; layer < loads.size(); ++layer) {
    INFO("MoE layer " << layer);
    CHECK(loads[layer].counts == routed[layer]);
    CHECK(std::accumulate(routed[layer].begin(), routed[layer].end(), std::int64_t{0}) ==
          std::int64_t{B} * config.seq * config.topk);
  }
}

TEST_CASE("invalid configs and inputs are refused with the offender named", "[model]") {
  auto error_of = [](const ModelConfig& c) {
    try {
      Model<float> m(c);
    } catch (const ferry::Error& e) {
      CHECK(e.code() == ferry::Errc::invalid_argument);
      return std::string(e.what());
    }
    return std::string("no error");
  };
  ModelConfig c = tiny_config();
  c.heads = 3;
  REQUIRE_THAT(error_of(c), Catch::Contains("ModelConfig.heads"));
  c = tiny_config();
  c.groups = 3;
  REQUIRE_THAT(error_of(c), Catch::Contains("ModelConfig.groups"));
  c = tiny_config();
  c.topk = 3;  // 1 group of 2 experts allowed
  REQUIRE_THAT(error_of(c), Catch::Contains("ModelConfig.topk"));
  c = tiny_config();
  c.n_dense = 3;
  REQUIRE_THAT(error_of(c), Catch::Contains("ModelConfig.n_dense"));

  Model<float> model(tiny_config());  // vocab 16
  std::vector<std::uint8_t> tokens(tiny_config().seq + 2, 1);
  tokens[3] = 200;
  REQUIRE_THROWS_WITH(model.forward(tokens.data(), 1), Catch::Contains("position 3"));
}

TEST_CASE("the footprint estimate bounds a built model's parameters and a step's activations", "[model]") {
  ModelConfig wide = testing::four_block_model(true);
  wide.seq = 32;
  wide.heads = 8;
  wide.dim = 32;
  ModelConfig dense_only = testing::four_block_model(false);
  dense_only.n_dense = dense_only.layers;
  ModelConfig recomputed = ModelConfig{};  // the trainer's defaults, with --recompute below
  const struct {
    const char* name;
    ModelConfig config;
    int rows;
    bool recompute;
  } cases[] = {
      {"tiny", tiny_config(), 3, false},     {"four blocks, MTP", testing::four_block_model(true), 2, false},
      {"dense only", dense_only, 2, false},  {"long sequences, many heads", wide, 2, false},
      {"defaults", ModelConfig{}, 4, false}, {"defaults, recompute", recomputed, 4, true}};
  for (const auto& c : cases) {
    INFO(c.name);
    Model<float> model(c.config, testing::local_exchanges());
    model.set_recompute_norms(c.recompute);
    const auto tokens = testing::random_tokens(c.config, c.rows, 5);
    model.forward(tokens.data(), c.rows);
    model.backward();
    const Footprint estimate = estimate_footprint(c.config, static_cast<std::uint64_t>(c.rows));
    const auto parameters = static_cast<std::uint64_t>(model.params().size());
    const auto activations = static_cast<std::uint64_t>(model.peak_activation_bytes());
    INFO("parameters " << parameters << " estimated " << estimate.parameters << "; activation bytes "
                       << activations << " estimated " << estimate.activation_bytes);
    CHECK(estimate.parameters >= parameters);
    CHECK(estimate.parameters <= 2 * parameters);  // an upper bound, not a wild one
    CHECK(estimate.activation_bytes >= activations);
    CHECK(estimate.activation_bytes <= 8 * activations);
    CHECK(estimate.largest.elements <= kMaxTensorElements);
  }
  // Absurd shapes saturate instead of wrapping to something small.
  ModelConfig huge;
  huge.dim = 1 << 16;
  huge.seq = 1 << 16;
  huge.heads = 1 << 16;
  huge.experts = 1 << 16;
  huge.expert_hidden = 1 << 20;
  huge.layers = 1 << 10;
  const Footprint estimate = estimate_footprint(huge, std::uint64_t{1} << 32);
  CHECK(estimate.activation_bytes == std::numeric_limits<std::uint64_t>::max());
  CHECK(estimate.largest.elements > kMaxTensorElements);
}
