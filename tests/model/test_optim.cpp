// AdamW, the learning-rate schedule, gradient clipping and the EMA against hand-computed values.
#include <catch2/catch.hpp>
#include <cmath>
#include <vector>

#include "ferry/model/optim.hpp"

using namespace ferry::model;

TEST_CASE("schedule: linear warm-up, cosine decay to the floor, flat after", "[model][optim]") {
  TrainConfig c;
  c.lr = 1e-2;
  c.min_lr_ratio = 0.1;
  c.warmup_steps = 10;
  c.steps = 110;
  REQUIRE(learning_rate(0, c) == Approx(1e-3));
  REQUIRE(learning_rate(4, c) == Approx(5e-3));
  REQUIRE(learning_rate(9, c) == Approx(1e-2));
  REQUIRE(learning_rate(10, c) == Approx(1e-2));               // cosine starts at the peak
  REQUIRE(learning_rate(60, c) == Approx((1e-2 + 1e-3) / 2));  // halfway: the mean of peak and floor
  REQUIRE(learning_rate(110, c) == Approx(1e-3));
  REQUIRE(learning_rate(500, c) == Approx(1e-3));
  for (std::int64_t s = 10; s < 110; ++s) REQUIRE(learning_rate(s + 1, c) <= learning_rate(s, c));
  c.warmup_steps = 0;
  REQUIRE(learning_rate(0, c) == Approx(1e-2));
}

TEST_CASE("global-norm clipping", "[model][optim]") {
  std::vector<float> g = {3, 0, -4};
  REQUIRE(clip_grad_norm(g, 10.0) == Approx(5.0));
  REQUIRE(g == std::vector<float>{3, 0, -4});  // under the threshold: untouched
  REQUIRE(clip_grad_norm(g, 1.0) == Approx(5.0));
  REQUIRE(g[0] == Approx(0.6f));
  REQUIRE(g[2] == Approx(-0.8f));
  REQUIRE(clip_grad_norm(g, 0.0) == Approx(1.0));  // 0 = off: reports, does not scale
  REQUIRE(g[0] == Approx(0.6f));
}

TEST_CASE("AdamW matches a hand computation, decays matrices only", "[model][optim]") {
  TrainConfig c;
  c.beta1 = 0.9;
  c.beta2 = 0.99;
  c.adam_eps = 1e-8;
  c.weight_decay = 0.5;
  std::vector<ParamInfo> info(2);
  info[0].name = "matrix";
  info[0].offset = 0;
  info[0].size = 2;
  info[0].decay = true;
  info[1].name = "norm";
  info[1].offset = 2;
  info[1].size = 1;
  info[1].decay = false;
  std::vector<float> p = {1.0f, -2.0f, 3.0f};
  const std::vector<std::vector<float>> grads = {{0.5f, -0.1f, 2.0f}, {-0.3f, 0.2f, 1.0f}};
  AdamW adam(3);
  // Reference in double.
  std::vector<double> ref(p.begin(), p.end()), m(3, 0), v(3, 0);
  const double lr = 0.01;
  for (int t = 1; t <= 2; ++t) {
    adam.step(p, grads[t - 1], info, lr, c);
    for (int i = 0; i < 3; ++i) {
      const double g = grads[t - 1][i];
      m[i] = 0.9 * m[i] + 0.1 * g;
      v[i] = 0.99 * v[i] + 0.01 * g * g;
      const double mh = m[i] / (1 - std::pow(0.9, t)), vh = v[i] / (1 - std::pow(0.99, t));
      const double wd = i < 2 ? 0.5 : 0.0;
      ref[i] -= lr * (mh / (std::sqrt(vh) + 1e-8) + wd * ref[i]);
    }
    for (int i = 0; i < 3; ++i) REQUIRE(p[i] == Approx(ref[i]).epsilon(1e-6));
  }
  REQUIRE(adam.steps() == 2);
  // First step is lr · sign(g) (+ decay): a quick sanity anchor independent of the loop above.
  std::vector<float> q = {1.0f, 1.0f, 1.0f};
  AdamW fresh(3);
  fresh.step(q, std::vector<float>{0.5f, -0.1f, 2.0f}, info, 0.01, c);
  REQUIRE(q[0] == Approx(1.0 - 0.01 * (1 + 0.5)));
  REQUIRE(q[1] == Approx(1.0 - 0.01 * (-1 + 0.5)));
  REQUIRE(q[2] == Approx(1.0 - 0.01));  // the norm weight does not decay
}

TEST_CASE("EMA of parameters", "[model][optim]") {
  std::vector<float> ema = {1, 1}, p = {3, -1};
  ema_update(ema, p, 0.75);
  REQUIRE(ema[0] == Approx(1.5));
  REQUIRE(ema[1] == Approx(0.5));
  ema_update(ema, p, 0.0);
  REQUIRE(ema == p);
}
