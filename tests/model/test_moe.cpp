// The MoE pieces: routing against an independent reference, the gate and balance-loss gradients, the expert
// exchange's bookkeeping, the whole MoE layer's backward pass and the bias update.
#include <catch2/catch.hpp>
#include <memory>
#include <set>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/model/balance.hpp"
#include "ferry/model/expert_exchange.hpp"
#include "ferry/model/moe_layer.hpp"
#include "ferry/model/router.hpp"
#include "grad_check.hpp"
#include "support/route_reference.hpp"

using namespace ferry::model;
using namespace ferry::model::testing;

namespace {

// The shared reference (tests/support/route_reference.hpp) on one token's scores; the group score adds the
// K / M best (at least 1, at most the group size), as the model's router does.
std::vector<int> reference_route(const double* s, const double* bias, const RouterShape& shape) {
  const int E = shape.experts, gs = E / shape.groups;
  const int kg = std::max(1, std::min(shape.topk / shape.max_groups, gs));
  std::vector<double> biased(E);
  for (int e = 0; e < E; ++e) biased[e] = s[e] + bias[e];
  return ferry::test::reference_route(biased, shape.groups, shape.max_groups, shape.topk, kg);
}

void require_close(const GradCheck& c, const char* what) {
  INFO(what << ": relative error " << c.relative_error << " over " << c.checked << " coordinates, |numeric| "
            << c.numeric_norm);
  REQUIRE(c.numeric_norm > 0);
  REQUIRE(c.relative_error < kGradTolerance);
}

}  // namespace

TEST_CASE("routing matches the reference, respects the group limit and breaks ties by index",
          "[model][moe]") {
  const std::vector<RouterShape> shapes = {{8, 2, 4, 2, 1.0}, {16, 4, 4, 2, 2.5}, {8, 3, 2, 1, 1.0},
                                           {6, 2, 1, 1, 1.0}, {12, 4, 6, 3, 1.0}, {8, 8, 4, 4, 1.0}};
  const std::uint64_t seed = 11;
  INFO("seed " << seed);
  Rng rng(seed);
  for (const RouterShape& shape : shapes) {
    const int E = shape.experts, K = shape.topk, n = 200;
    CAPTURE(E, K, shape.groups, shape.max_groups);
    std::vector<double> s(n * E), bias(E);
    // Half the tokens get scores from three levels only, so ties are everywhere.
    for (int i = 0; i < n * E; ++i) s[i] = i < n * E / 2 ? 0.25 * (1 + rng.below(3)) : rng.uniform();
    for (double& b : bias) b = rng.below(2) ? 0.0 : 0.1 * rng.uniform();
    std::vector<int> idx(n * K);
    route_select(idx.data(), s.data(), bias.data(), n, shape);
    for (int i = 0; i < n; ++i) {
      CAPTURE(i);
      const std::vector<int> got(idx.begin() + i * K, idx.begin() + (i + 1) * K);
      REQUIRE(got == reference_route(s.data() + i * E, bias.data(), shape));
      std::set<int> groups;
      for (int e : got) groups.insert(e / (E / shape.groups));
      REQUIRE(static_cast<int>(groups.size()) <= shape.max_groups);
    }
    std::vector<double> w(n * K);
    route_weights(w.data(), idx.data(), s.data(), n, shape);
    for (int i = 0; i < n; ++i) {
      double sum = 0;
      for (int k = 0; k < K; ++k) sum += w[i * K + k];
      REQUIRE(sum == Approx(shape.route_scale).epsilon(1e-12));
    }
  }
}

TEST_CASE("node-limited routing gives up the global top-k to stay inside max_groups", "[model][moe]") {
  // Groups {0,1} {2,3} {4,5} {6,7}; global top-2 is {0, 2} (two groups), but group 1 scores 0.8 + 0.7 = 1.5
  // against group 0's 0.9 + 0.1 = 1.0, so with M = 1 the token goes to {2, 3}.
  const RouterShape shape{8, 2, 4, 1, 1.0};
  const std::vector<double> s = {0.9, 0.1, 0.8, 0.7, 0.05, 0.04, 0.03, 0.02}, bias(8, 0.0);
  std::vector<int> idx(2);
  route_select(idx.data(), s.data(), bias.data(), 1, shape);
  REQUIRE(idx == std::vector<int>{2, 3});
  const RouterShape unlimited{8, 2, 4, 4, 1.0};
  route_select(idx.data(), s.data(), bias.data(), 1, unlimited);
  REQUIRE(idx == std::vector<int>{0, 2});
}

TEST_CASE("the balancing bias steers selection but not the weights", "[model][moe]") {
  const RouterShape shape{4, 2, 1, 1, 2.0};
  const std::vector<double> s = {0.6, 0.5, 0.4, 0.3}, bias = {0.0, 0.0, 0.25, 0.4};
  std::vector<int> idx(2);
  route_select(idx.data(), s.data(), bias.data(), 1, shape);
  REQUIRE(idx == std::vector<int>{3, 2});  // biased 0.6 0.5 0.65 0.7: the two weakest experts win
  std::vector<double> w(2);
  route_weights(w.data(), idx.data(), s.data(), 1, shape);
  REQUIRE(w[0] == Approx(2.0 * 0.3 / 0.7));
  REQUIRE(w[1] == Approx(2.0 * 0.4 / 0.7));
}

TEST_CASE("a NaN gate score is refused with the token named", "[model][moe]") {
  const RouterShape shape{4, 2, 1, 1, 1.0};
  std::vector<double> s = {0.1, 0.2, 0.3, 0.4, 0.5, std::nan(""), 0.1, 0.2}, bias(4, 0.0);
  std::vector<int> idx(4);
  REQUIRE_THROWS_WITH(route_select(idx.data(), s.data(), bias.data(), 2, shape), Catch::Contains("token 1"));
}

TEST_CASE("gate weights path backward matches finite differences", "[model][grad][moe]") {
  // L = Σ route_weights(σ(logits)) ⊙ R for a fixed selection: the only path by which routing is trained.
  const RouterShape shape{8, 3, 4, 2, 1.7};
  const int n = 5, E = shape.experts, K = shape.topk;
  Rng rng(12);
  auto logits = random_vector(n * E, rng, 2.0), r = random_vector(n * K, rng);
  std::vector<double> s(n * E), bias(E, 0.0), w(n * K);
  std::vector<int> idx(n * K);
  gate_scores(s.data(), logits.data(), s.size());
  route_select(idx.data(), s.data(), bias.data(), n, shape);
  auto f = [&] {
    gate_scores(s.data(), logits.data(), s.size());
    route_weights(w.data(), idx.data(), s.data(), n, shape);
    return dot(w, r);
  };
  f();
  std::vector<double> ds(n * E, 0), dlogits(n * E, 0);
  route_weights_backward(ds.data(), r.data(), idx.data(), s.data(), n, shape);
  gate_scores_backward(dlogits.data(), ds.data(), s.data(), ds.size());
  require_close(check_gradient(logits, dlogits, f), "gate logits");
}

TEST_CASE("sequence-wise balance loss: value and gradient", "[model][grad][moe]") {
  SECTION("perfect balance with uniform scores costs exactly alpha") {
    // E = 4, K = 2, one sequence of 2 tokens routed to {0,1} and {2,3}: f_e = 1 and Σ_e P_e = 1.
    const std::vector<double> s(2 * 4, 0.5);
    const std::vector<int> idx = {0, 1, 2, 3};
    std::vector<double> f(4);
    REQUIRE(balance_loss_forward(f.data(), s.data(), idx.data(), 1, 2, 4, 2, 0.3) == Approx(0.3));
    for (double fe : f) REQUIRE(fe == Approx(1.0));
  }
  SECTION("backward matches finite differences") {
    const int B = 3, T = 4, E = 6, K = 2;
    const double alpha = 0.5;
    const RouterShape shape{E, K, 3, 2, 1.0};
    Rng rng(13);
    std::vector<double> s(B * T * E), bias(E, 0.0), freq(B * E);
    for (double& v : s) v = 0.05 + 0.9 * rng.uniform();
    std::vector<int> idx(B * T * K);
    route_select(idx.data(), s.data(), bias.data(), B * T, shape);
    auto f = [&] { return balance_loss_forward(freq.data(), s.data(), idx.data(), B, T, E, K, alpha); };
    f();
    std::vector<double> ds(s.size(), 0);
    balance_loss_backward(ds.data(), 1.0, freq.data(), s.data(), B, T, E, alpha);
    require_close(check_gradient(s, ds, f), "scores");
  }
}

TEST_CASE("local expert exchange: grouping, combine and their backward twins", "[model][moe]") {
  const int tokens = 5, K = 2, E = 4, C = 3;
  const std::vector<int> expert = {2, 0, 1, 2, -1, 3, 2, 1, 0, -1};
  std::vector<double> x(tokens * C), weight(tokens * K);
  for (int i = 0; i < tokens * C; ++i) x[i] = i + 1;
  for (int i = 0; i < tokens * K; ++i) weight[i] = 0.1 * (i + 1);
  LocalExpertExchange<double> exchange(E);
  ExpertBatch<double> received;
  auto handle = exchange.dispatch(x.data(), C, expert.data(), weight.data(), tokens, K, received);
  REQUIRE(received.expert_offsets == std::vector<int>{0, 2, 4, 7, 8});
  // Expert 2's rows come from tokens 0, 1, 3 in token order.
  REQUIRE(received.x[4 * C] == x[0 * C]);
  REQUIRE(received.x[5 * C] == x[1 * C]);
  REQUIRE(received.x[6 * C] == x[3 * C]);
  REQUIRE(received.weight[6] == weight[3 * K + 0]);

  // Rows weighted on the expert side, combined by plain sums: y_t = (Σ_k w_tk) x_t.
  std::vector<double> rows(received.x.size());
  for (int r = 0; r < received.rows(); ++r)
    for (int c = 0; c < C; ++c) rows[r * C + c] = received.weight[r] * received.x[r * C + c];
  std::vector<double> y(tokens * C, 0);
  exchange.combine(*handle, rows.data(), y.data());
  for (int t = 0; t < tokens; ++t) {
    double wsum = 0;
    for (int k = 0; k < K; ++k)
      if (expert[t * K + k] >= 0) wsum += weight[t * K + k];
    for (int c = 0; c < C; ++c) REQUIRE(y[t * C + c] == Approx(wsum * x[t * C + c]));
  }

  std::vector<double> drows(received.x.size());
  exchange.combine_backward(*handle, x.data(), drows.data());
  REQUIRE(drows == received.x);  // combine's backward is a dispatch of dy
  std::vector<double> dweight_rows(received.rows(), 1.0), dx(tokens * C, 0), dweight(tokens * K, 0);
  exchange.dispatch_backward(*handle, received.x.data(), dweight_rows.data(), dx.data(), dweight.data());
  for (int t = 0; t < tokens; ++t) {
    int valid = 0;
    for (int k = 0; k < K; ++k) {
      valid += expert[t * K + k] >= 0;
      REQUIRE(dweight[t * K + k] == (expert[t * K + k] >= 0 ? 1.0 : 0.0));
    }
    for (int c = 0; c < C; ++c) REQUIRE(dx[t * C + c] == valid * x[t * C + c]);
  }

  const std::vector<int> bad = {0, 1, 2, 3, 1, 2, 7, 0, 0, 1};
  REQUIRE_THROWS_WITH(exchange.dispatch(x.data(), C, bad.data(), weight.data(), tokens, K, received),
                      Catch::Contains("token 3") && Catch::Contains("expert 7"));
}

TEST_CASE("MoE layer backward matches finite differences (shared + routed experts, gate, balance loss)",
          "[model][grad][moe]") {
  const int B = 2, T = 3, n = B * T, C = 6, H = 4;
  MoEShape shape;
  shape.dim = C;
  shape.hidden = H;
  shape.router = RouterShape{8, 2, 4, 2, 1.5};
  shape.balance_alpha = 0.05;  // large enough that a wrong balance gradient would show
  const int E = shape.router.experts;
  const std::uint64_t seed = 14;
  INFO("seed " << seed);
  Rng rng(seed);
  auto x = random_vector(n * C, rng), gate = random_vector(C * E, rng, 1.5),
       shared_w13 = random_vector(C * 2 * H, rng), shared_w2 = random_vector(H * C, rng),
       experts_w13 = random_vector(E * C * 2 * H, rng), experts_w2 = random_vector(E * H * C, rng),
       r = random_vector(n * C, rng);
  MoELayer<double> layer(shape, std::make_unique<LocalExpertExchange<double>>(E));
  for (double& b : layer.bias()) b = 0.02 * rng.uniform();
  MoEWeights<double> w{gate.data(), shared_w13.data(), shared_w2.data(), experts_w13.data(),
                       experts_w2.data()};
  std::vector<double> y(n * C);
  auto forward = [&] { return layer.forward(y.data(), x.data(), B, T, w); };
  forward();
  const std::vector<int> routing = layer.routing();
  // A probe moves scores by about eps · |∂s/∂θ| ≈ 1e-5; a margin 100× that proves no probe flips a choice,
  // and f re-checks the routing after every probe anyway.
  REQUIRE(layer.selection_margin() > 1e-3);
  auto f = [&] {
    const double balance = forward();
    REQUIRE(layer.routing() == routing);
    return dot(y, r) + balance;
  };
  std::vector<double> dx(n * C, 0), dgate(gate.size(), 0), dsw13(shared_w13.size(), 0),
      dsw2(shared_w2.size(), 0), dew13(experts_w13.size(), 0), dew2(experts_w2.size(), 0);
  forward();
  layer.backward(dx.data(),
                 MoEGrads<double>{dgate.data(), dsw13.data(), dsw2.data(), dew13.data(), dew2.data()},
                 r.data(), x.data(), w);
  require_close(check_gradient(x, dx, f), "x");
  require_close(check_gradient(gate, dgate, f), "gate");
  require_close(check_gradient(shared_w13, dsw13, f), "shared.w13");
  require_close(check_gradient(shared_w2, dsw2, f), "shared.w2");
  require_close(check_gradient(experts_w13, dew13, f), "experts.w13");
  require_close(check_gradient(experts_w2, dew2, f), "experts.w2");
}

TEST_CASE("expert load counts and the aux-loss-free bias update", "[model][moe]") {
  const std::vector<int> idx = {0, 0, 0, 1, 2, 0, 3, 2};  // 4 tokens × K=2 over E=4: counts 4, 1, 2, 1
  const ExpertLoad load = count_expert_load(idx.data(), 4, 2, 4);
  REQUIRE(load.counts == std::vector<std::int64_t>{4, 1, 2, 1});
  REQUIRE(load.mean() == 2.0);
  REQUIRE(load.max_over_mean() == 2.0);
  std::vector<double> bias = {0.5, 0.5, 0.5, 0.5};
  update_balance_bias(bias.data(), load, 0.1);
  REQUIRE(bias == std::vector<double>{0.4, 0.6, 0.5, 0.6});  // over: down, under: up, exactly mean: unchanged
  update_balance_bias(bias.data(), load, 0.0);
  REQUIRE(bias == std::vector<double>{0.4, 0.6, 0.5, 0.6});
}
