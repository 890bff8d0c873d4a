// The benchmarks' routing generator and row values: node limits, distinct experts, determinism, skew, and
// rows that are exact in bf16 and fp8 e4m3 (checked against ferry's own conversions).
#include <catch2/catch.hpp>
#include <set>
#include <stdexcept>

#include "bench/dispatch_rows.hpp"
#include "bench/routing_gen.hpp"
#include "ferry/kernels/protocol/numeric.hpp"

using namespace ferry::bench;

namespace {

RoutingSpec spec_of(int nodes, int local, int max_nodes, int topk, std::int64_t experts, double skew = 0) {
  RoutingSpec spec;
  spec.num_tokens = 500;
  spec.topk = topk;
  spec.num_experts = experts;
  spec.num_ranks = nodes * local;
  spec.local_size = local;
  spec.max_nodes = max_nodes;
  spec.skew = skew;
  spec.seed = 42;
  return spec;
}

}  // namespace

TEST_CASE("routing respects max nodes and picks distinct experts in range", "[unit]") {
  for (int max_nodes : {1, 2, 3}) {
    RoutingSpec spec = spec_of(4, 2, max_nodes, 8, 64);
    for (int rank = 0; rank < spec.num_ranks; ++rank) {
      Routing routing = generate_routing(spec, rank);
      REQUIRE(routing.topk_idx.size() == static_cast<std::size_t>(spec.num_tokens * spec.topk));
      for (std::int64_t t = 0; t < spec.num_tokens; ++t) {
        const std::int64_t* experts = &routing.topk_idx[t * spec.topk];
        std::set<std::int64_t> distinct(experts, experts + spec.topk);
        CHECK(distinct.size() == static_cast<std::size_t>(spec.topk));
        CHECK(*distinct.begin() >= 0);
        CHECK(*distinct.rbegin() < spec.num_experts);
        CHECK(distinct_nodes(spec, experts) <= max_nodes);
      }
    }
  }
}

TEST_CASE("routing is a pure function of seed and rank", "[unit]") {
  RoutingSpec spec = spec_of(2, 2, 2, 8, 64);
  CHECK(generate_routing(spec, 1).topk_idx == generate_routing(spec, 1).topk_idx);
  CHECK(generate_routing(spec, 1).topk_weights == generate_routing(spec, 1).topk_weights);
  CHECK(generate_routing(spec, 0).topk_idx != generate_routing(spec, 1).topk_idx);
  RoutingSpec other = spec;
  other.seed = 43;
  CHECK(generate_routing(spec, 0).topk_idx != generate_routing(other, 0).topk_idx);
}

TEST_CASE("uniform routing spreads the load, skew concentrates it on low experts", "[unit]") {
  auto load = [](double skew) {
    RoutingSpec spec = spec_of(2, 2, 2, 4, 32, skew);
    spec.num_tokens = 4000;
    std::vector<int> per_expert(spec.num_experts, 0);
    for (std::int64_t e : generate_routing(spec, 0).topk_idx) ++per_expert[e];
    return per_expert;
  };
  const auto uniform = load(0);
  const auto skewed = load(1.5);
  // 16000 slots over 32 experts: 500 each on average.
  for (int count : uniform) CHECK((count > 350 && count < 650));
  CHECK(skewed.front() > 3 * skewed.back());
  CHECK(skewed.front() > uniform.front());
}

TEST_CASE("routing rejects impossible specs naming the field", "[unit]") {
  CHECK_THROWS_WITH(generate_routing(spec_of(2, 2, 1, 20, 32), 0), Catch::Contains("--topk 20 exceeds"));
  CHECK_THROWS_WITH(generate_routing(spec_of(2, 2, 2, 4, 30), 0), Catch::Contains("--experts 30 must be"));
  CHECK_THROWS_AS(generate_routing(spec_of(2, 2, 2, 4, 32), 4), std::invalid_argument);
}

TEST_CASE("bench rows are exact in bf16 and fp8 and agree with ferry's conversions", "[unit]") {
  namespace p = ferry::kernels::protocol;
  for (int digit = -7; digit <= 7; ++digit) {
    CHECK(e4m3_of_digit(digit) == p::float_to_e4m3(static_cast<float>(digit)));
    CHECK(p::e4m3_to_float(e4m3_of_digit(digit)) == static_cast<float>(digit));
  }
  std::vector<std::uint16_t> bf16(300);
  std::vector<std::uint8_t> fp8(300);
  std::vector<float> scales(scale_blocks(300));
  fill_bf16_row(3, 17, 300, bf16.data());
  fill_fp8_row(3, 17, 300, fp8.data(), scales.data());
  for (std::int64_t c = 0; c < 300; ++c) {
    const float value = row_value(3, 17, c);
    CHECK(p::bf16_to_float(bf16[c]) == value);
    CHECK(p::float_to_bf16(value) == bf16[c]);
    CHECK(p::e4m3_to_float(fp8[c]) * scales[c / kScaleBlock] == value);
    // Sums of up to 36 copies stay exact in bf16 (the combine check relies on it).
    CHECK(p::bf16_to_float(p::float_to_bf16(value * 36)) == value * 36);
  }
  CHECK(row_bytes(7168, false) == 14336);
  CHECK(row_bytes(7168, true) == 7168 + 56 * 4);
}
