// The public routing helpers: compute_layout (DeepEP's get_dispatch_layout) and the DeepSeek-V3 node-limited
// gate, including every error they name.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <random>

#include "ferry/core/error.hpp"
#include "ferry/gate.hpp"
#include "ferry/layout.hpp"
#include "support/route_reference.hpp"

using namespace ferry;

TEST_CASE("compute_layout counts tokens per rank, node and expert", "[unit]") {
  // 4 ranks in 2 nodes of 2, 8 experts: rank r owns 2r and 2r+1.
  std::vector<std::int64_t> topk = {0,  1,  -1,  // token 0: rank 0 twice -> once
                                    7,  2,  4,   // token 1: ranks 3, 1, 2 -> nodes 1, 0
                                    -1, -1, -1,  // token 2: nowhere
                                    5,  4,  6};  // token 3: rank 2 (experts 4, 5), rank 3
  Layout layout = compute_layout(TensorView(topk.data(), {4, 3}, DType::int64), 8, 4, 2, 2);
  CHECK(layout.tokens_per_rank == std::vector<std::int64_t>{1, 1, 2, 2});
  CHECK(layout.tokens_per_node == std::vector<std::int64_t>{2, 2});
  CHECK(layout.tokens_per_expert == std::vector<std::int64_t>{1, 1, 1, 0, 2, 1, 1, 1});
  CHECK(layout.is_token_in_rank == std::vector<std::uint8_t>{1, 0, 0, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1});
  CHECK(layout.in_rank(1, 3));
  CHECK_FALSE(layout.in_rank(2, 0));
  CHECK(layout.num_nodes() == 2);
}

TEST_CASE("compute_layout names what is wrong with the routing", "[unit]") {
  std::vector<std::int64_t> topk = {0, 1, 2, 3, 9, 1};
  TensorView view(topk.data(), {2, 3}, DType::int64);
  REQUIRE_THROWS_WITH(compute_layout(view, 8, 4, 2, 2),
                      Catch::Contains("topk_idx[1][1] = 9 is out of range") && Catch::Contains("[0, 8)"));
  topk[4] = -3;
  REQUIRE_THROWS_WITH(compute_layout(view, 8, 4, 2, 2), Catch::Contains("topk_idx[1][1] = -3"));
  topk = {0, 4, 6, 1, 2, 3};  // token 0: nodes 0, 2, 3 on 4 nodes of 1
  REQUIRE_THROWS_WITH(compute_layout(view, 8, 4, 1, 2),
                      Catch::Contains("token 0 touches 3 nodes (0, 2, 3) but max_nodes is 2"));
  REQUIRE_NOTHROW(compute_layout(view, 8, 4, 1, 3));
  REQUIRE_THROWS_WITH(compute_layout(view, 10, 4, 1, 3),
                      Catch::Contains("num_experts 10") && Catch::Contains("4 ranks"));
  std::vector<float> wrong(6);
  REQUIRE_THROWS_WITH(compute_layout(TensorView(wrong.data(), {2, 3}, DType::fp32), 8, 4, 1, 3),
                      Catch::Contains("topk_idx must be a [T, K] int64") && Catch::Contains("[2, 3] fp32"));
  REQUIRE_THROWS_WITH(compute_layout(view, 8, 6, 4, 3), Catch::Contains("6 ranks cannot form nodes of 4"));
  topk = {0, 4, 4, 1, 2, 3};
  REQUIRE_THROWS_WITH(compute_layout(view, 8, 4, 1, 3),
                      Catch::Contains("token 0 names expert 4 twice (topk_idx slots 1 and 2)"));
  REQUIRE_THROWS_WITH(compute_layout(view, 2, 2, 1, 2),
                      Catch::Contains("3 slots per token but there are only 2"));
  try {
    compute_layout(view, 8, 4, 1, 1);
    FAIL("no error");
  } catch (const Error& error) {
    CHECK(error.code() == Errc::invalid_argument);
  }
}

TEST_CASE("the gate keeps exactly the best groups and the best experts inside them (exact reference)",
          "[unit]") {
  struct Shape {
    std::int64_t experts;
    int groups, groups_per_token, topk;
  };
  // DeepSeek-V3's 256 experts in 8 groups, 4 groups of 8 experts, scaled down; groups of one expert; one
  // group; a token allowed every group.
  const Shape shapes[] = {{32, 8, 3, 6}, {64, 8, 4, 8}, {16, 4, 2, 4},
                          {8, 8, 4, 4},  {12, 1, 1, 3}, {24, 4, 4, 4}};
  std::mt19937 rng(11);
  for (const Shape& shape : shapes) {
    for (bool logits : {false, true}) {
      GateConfig config;
      config.num_experts = shape.experts;
      config.num_groups = shape.groups;
      config.groups_per_token = shape.groups_per_token;
      config.topk = shape.topk;
      config.route_scale = 2.5f;
      config.scores_are_logits = logits;
      const std::int64_t T = 200, E = shape.experts, K = shape.topk;
      // Half the tokens score on three levels only, so that ties between experts and between groups are
      // everywhere; the bias is 0 for half the experts, so ties survive it.
      std::vector<float> scores(T * E);
      for (std::int64_t i = 0; i < T * E; ++i) {
        scores[i] = i < T * E / 2 ? 0.25f * float(1 + rng() % 3)
                                  : std::uniform_real_distribution<float>(logits ? -4.0f : 0.0f, 1.0f)(rng);
      }
      std::vector<float> bias(E);
      for (float& b : bias) b = rng() % 2 ? 0.0f : std::uniform_real_distribution<float>(-0.2f, 0.2f)(rng);
      const GateOutput out = node_limited_gate(scores, T, bias, config);
      REQUIRE(out.topk_idx.size() == static_cast<std::size_t>(T * K));
      for (std::int64_t t = 0; t < T; ++t) {
        INFO(E << " experts in " << shape.groups << " groups, " << shape.groups_per_token
               << " per token, top-" << K << (logits ? ", logits" : "") << ": token " << t);
        std::vector<float> unbiased(E), biased(E);
        for (std::int64_t e = 0; e < E; ++e) {
          const float value = scores[t * E + e];
          unbiased[e] = logits ? 1.0f / (1.0f + std::exp(-value)) : value;
          biased[e] = unbiased[e] + bias[e];
        }
        const std::vector<int> want = ferry::test::reference_route(
            biased, shape.groups, shape.groups_per_token, shape.topk, shape.topk / shape.groups_per_token);
        const std::vector<int> got(out.topk_idx.begin() + t * K, out.topk_idx.begin() + (t + 1) * K);
        REQUIRE(got == want);
        float total = 0.0f;
        for (int e : want) total += unbiased[e];
        for (int k = 0; k < K; ++k) {
          CHECK(out.topk_weights[t * K + k] == Approx(unbiased[want[k]] / total * 2.5f).epsilon(1e-6));
        }
      }
    }
  }
}

TEST_CASE("the gate's bias steers selection only, ties go to the lower index", "[unit]") {
  GateConfig config;
  config.num_experts = 8;
  config.num_groups = 4;
  config.groups_per_token = 2;
  config.topk = 2;
  std::vector<float> equal(8, 0.5f);
  GateOutput tied = node_limited_gate(equal, 1, {}, config);
  CHECK(tied.topk_idx == std::vector<std::int64_t>{0, 1});
  CHECK(tied.topk_weights == std::vector<float>{0.5f, 0.5f});

  std::vector<float> bias(8, 0.0f);
  bias[7] = 10.0f;
  std::vector<float> scores = {0.9f, 0.8f, 0.7f, 0.6f, 0.5f, 0.4f, 0.3f, 0.1f};
  GateOutput steered = node_limited_gate(scores, 1, bias, config);
  CHECK(steered.topk_idx == std::vector<std::int64_t>{7, 0});
  CHECK(steered.topk_weights[0] == Approx(0.1f / 1.0f));  // weights from the unbiased scores
  CHECK(steered.topk_weights[1] == Approx(0.9f / 1.0f));

  config.scores_are_logits = true;
  std::vector<float> logits = {0.0f, 2.0f, -1.0f, 1.0f, -3.0f, 0.5f, 0.0f, 0.0f};
  GateOutput sigmoid = node_limited_gate(logits, 1, {}, config);
  CHECK(sigmoid.topk_idx == std::vector<std::int64_t>{1, 3});
  float s1 = 1 / (1 + std::exp(-2.0f)), s3 = 1 / (1 + std::exp(-1.0f));
  CHECK(sigmoid.topk_weights[0] == Approx(s1 / (s1 + s3)));
}

TEST_CASE("the gate rejects inconsistent configs and scores", "[unit]") {
  GateConfig config;
  config.num_experts = 8;
  config.num_groups = 3;
  config.topk = 2;
  std::vector<float> scores(8, 0.5f);
  REQUIRE_THROWS_WITH(node_limited_gate(scores, 1, {}, config),
                      Catch::Contains("num_groups 3 does not divide"));
  config.num_groups = 4;
  config.groups_per_token = 3;
  REQUIRE_THROWS_WITH(node_limited_gate(scores, 1, {}, config),
                      Catch::Contains("topk 2 is not a positive multiple"));
  config.groups_per_token = 1;
  config.topk = 4;
  REQUIRE_THROWS_WITH(node_limited_gate(scores, 1, {}, config), Catch::Contains("exceeds the group size 2"));
  config.topk = 2;
  REQUIRE_THROWS_WITH(node_limited_gate(scores, 2, {}, config), Catch::Contains("scores has 8 values"));
  scores[3] = NAN;
  REQUIRE_THROWS_WITH(node_limited_gate(scores, 1, {}, config), Catch::Contains("token 0 for expert 3"));
  scores[3] = 0.5f;
  std::vector<float> short_bias(3);
  REQUIRE_THROWS_WITH(node_limited_gate(scores, 1, short_bias, config), Catch::Contains("bias has 3 values"));
}
