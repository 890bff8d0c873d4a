// bf16 and fp8 e4m3 conversions: every code decodes to the value its bits describe, every code survives a
// round trip, and values between two codes round to the nearer one, ties to the even code; e4m3 saturates at
// 448. The host's vectorized combine reduction matches its element-by-element definition.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <iterator>
#include <random>
#include <vector>

#include "common/seed.hpp"
#include "ferry/kernels/host/reduce.hpp"
#include "ferry/kernels/protocol/numeric.hpp"

namespace p = ferry::kernels::protocol;

namespace {

bool is_nan_e4m3(int code) {
  return (code & 0x7f) == 0x7f;
}

// The e4m3fn value of `code`, from the definition: sign, 4 exponent bits (bias 7), 3 mantissa bits.
double e4m3_by_definition(int code) {
  int sign = code >> 7 ? -1 : 1;
  int exponent = (code >> 3) & 0xf;
  int mantissa = code & 7;
  if (exponent == 0) return sign * std::ldexp(mantissa / 8.0, -6);
  return sign * std::ldexp(1.0 + mantissa / 8.0, exponent - 7);
}

}  // namespace

TEST_CASE("every e4m3 code decodes to its defined value", "[unit]") {
  for (int code = 0; code < 256; ++code) {
    float value = p::e4m3_to_float(static_cast<std::uint8_t>(code));
    if (is_nan_e4m3(code)) {
      CHECK(std::isnan(value));
    } else {
      CHECK(value == static_cast<float>(e4m3_by_definition(code)));
    }
  }
  CHECK(p::e4m3_to_float(0x7e) == 448.0f);
  CHECK(p::e4m3_to_float(0x01) == std::ldexp(1.0f, -9));
}

TEST_CASE("e4m3 encoding rounds to nearest, ties to even, and saturates", "[unit]") {
  for (int code = 0; code < 256; ++code) {
    if (is_nan_e4m3(code)) continue;
    float value = p::e4m3_to_float(static_cast<std::uint8_t>(code));
    int expected = code == 0x80 ? 0x80 : code;  // -0 keeps its sign
    CHECK(p::float_to_e4m3(value) == expected);
  }
  // Between neighbours: below the midpoint goes down, above goes up, the midpoint goes to the even code.
  for (int code = 0; code < 0x7e; ++code) {
    float low = p::e4m3_to_float(static_cast<std::uint8_t>(code));
    float high = p::e4m3_to_float(static_cast<std::uint8_t>(code + 1));
    float middle = (low + high) / 2;  // exact in fp32
    INFO("codes " << code << " and " << code + 1);
    CHECK(p::float_to_e4m3(std::nextafter(middle, 0.0f)) == code);
    CHECK(p::float_to_e4m3(std::nextafter(middle, 1000.0f)) == code + 1);
    CHECK(p::float_to_e4m3(middle) == (code % 2 == 0 ? code : code + 1));
    CHECK(p::float_to_e4m3(-middle) == (0x80 | (code % 2 == 0 ? code : code + 1)));
  }
  CHECK(p::float_to_e4m3(464.0f) == 0x7e);
  CHECK(p::float_to_e4m3(1e9f) == 0x7e);
  CHECK(p::float_to_e4m3(-1e9f) == 0xfe);
  CHECK(p::float_to_e4m3(INFINITY) == 0x7e);
  CHECK(is_nan_e4m3(p::float_to_e4m3(NAN)));
  CHECK(p::float_to_e4m3(std::ldexp(1.0f, -11)) == 0);  // below half the smallest subnormal
  CHECK(p::float_to_e4m3(std::ldexp(1.0f, -10)) == 0);  // exactly half: ties to even (0)
  CHECK(p::float_to_e4m3(std::ldexp(1.5f, -10)) == 1);
  CHECK(p::float_to_e4m3(1e-30f) == 0);
}

TEST_CASE("bf16 conversions are exact on codes and round to nearest even between them", "[unit]") {
  for (std::uint32_t code = 0; code < 0x10000; ++code) {
    auto bits = static_cast<std::uint16_t>(code);
    float value = p::bf16_to_float(bits);
    if (std::isnan(value)) {
      CHECK(std::isnan(p::bf16_to_float(p::float_to_bf16(value))));
    } else {
      REQUIRE(p::float_to_bf16(value) == bits);
    }
  }
  CHECK(p::float_to_bf16(1.0f + std::ldexp(1.0f, -8)) == 0x3f80);      // tie, even stays
  CHECK(p::float_to_bf16(1.0f + 3 * std::ldexp(1.0f, -8)) == 0x3f82);  // tie, odd rounds up
  CHECK(p::float_to_bf16(std::nextafter(1.0f + std::ldexp(1.0f, -8), 2.0f)) == 0x3f81);
  CHECK(p::float_to_bf16(-2.0f) == 0xc000);
  CHECK(p::float_to_bf16(3.4e38f) == 0x7f80);  // rounds past the largest finite to infinity, as IEEE does
}

namespace {

// The reduction of numeric.hpp written as its comment says, one element at a time: the reference the
// vectorized host reduction must match bit for bit.
std::vector<std::uint16_t> reduce_by_definition(const std::vector<std::vector<std::uint16_t>>& terms,
                                                const std::vector<std::vector<std::uint16_t>>& group,
                                                int group_at, const std::vector<std::uint16_t>* bias,
                                                std::size_t hidden) {
  std::vector<std::uint16_t> out(hidden);
  for (std::size_t i = 0; i < hidden; ++i) {
    float acc = bias != nullptr ? p::bf16_to_float((*bias)[i]) : 0.0f;
    std::size_t next = 0;
    const std::size_t count = terms.size() + (group.empty() ? 0 : 1);
    for (std::size_t t = 0; t < count; ++t) {
      if (!group.empty() && t == static_cast<std::size_t>(group_at)) {
        float part = 0.0f;
        for (const auto& row : group) part += p::bf16_to_float(row[i]);
        acc += p::bf16_to_float(p::float_to_bf16(part));
      } else {
        acc += p::bf16_to_float(terms[next++][i]);
      }
    }
    out[i] = p::float_to_bf16(acc);
  }
  return out;
}

}  // namespace

TEST_CASE("the host's vectorized combine reduction gives the bits of the element-by-element definition",
          "[unit]") {
  const std::uint64_t seed = ferry::test::announce_seed("vectorized combine reduction");
  INFO("seed " << seed);
  std::mt19937_64 rng(seed);
  // Codes that matter to the bits: both zeros (0 + -0 is +0), NaNs, infinities, and ordinary values.
  const std::uint16_t special[] = {0x0000, 0x8000, 0x7fc0, 0xffc1, 0x7f80, 0xff80, 0x3f80, 0xbf80};
  auto draw = [&] {
    if (rng() % 16 == 0) return special[rng() % std::size(special)];
    return p::float_to_bf16(std::uniform_real_distribution<float>(-8.0f, 8.0f)(rng));
  };
  for (int round = 0; round < 200; ++round) {
    const std::size_t hidden = 1 + rng() % 1500;  // crosses the reduction's 512-element blocks
    const int num_terms = static_cast<int>(rng() % 5);
    const int group_size = static_cast<int>(rng() % 6);
    const int group_at = num_terms > 0 ? static_cast<int>(rng() % (num_terms + 1)) : 0;
    auto rows = [&](int count) {
      std::vector<std::vector<std::uint16_t>> result(count, std::vector<std::uint16_t>(hidden));
      for (auto& row : result)
        for (auto& value : row) value = draw();
      return result;
    };
    const auto terms = rows(num_terms);
    const auto group = rows(group_size);
    const bool with_bias = rng() % 2 == 0;
    const auto bias = rows(1)[0];
    std::vector<const std::byte*> term_ptrs, group_ptrs;
    for (const auto& row : terms) term_ptrs.push_back(reinterpret_cast<const std::byte*>(row.data()));
    for (const auto& row : group) group_ptrs.push_back(reinterpret_cast<const std::byte*>(row.data()));
    std::vector<std::uint16_t> out(hidden, 0x1234);
    p::ReduceRows job;
    job.kind = p::PayloadKind::bf16;
    job.hidden = static_cast<std::int64_t>(hidden);
    job.terms = term_ptrs.data();
    job.num_terms = num_terms;
    job.group = group_ptrs.data();
    job.group_size = group_size;
    job.group_at = group_at;
    job.bias = with_bias ? reinterpret_cast<const std::byte*>(bias.data()) : nullptr;
    job.out = reinterpret_cast<std::byte*>(out.data());
    ferry::kernels::host::reduce_rows(job);
    const auto expected = reduce_by_definition(terms, group, group_at, with_bias ? &bias : nullptr, hidden);
    INFO("round " << round << ": hidden " << hidden << ", " << num_terms << " terms, group of " << group_size
                  << " at " << group_at << (with_bias ? ", bias" : ""));
    // Bits equal, except that a NaN's payload is whichever NaN operand the hardware kept (C++ does not fix
    // it).
    std::size_t i = 0;
    for (; i < hidden; ++i) {
      const bool both_nan = std::isnan(p::bf16_to_float(out[i])) && std::isnan(p::bf16_to_float(expected[i]));
      if (!both_nan && out[i] != expected[i]) break;
    }
    INFO("first difference at element " << i << ": 0x" << std::hex << (i < hidden ? out[i] : 0)
                                        << " where the definition gives 0x"
                                        << (i < hidden ? expected[i] : 0));
    REQUIRE(i == hidden);
  }
}
