// bf16 and fp8 e4m3 conversions: every code decodes to the value its bits describe, every code survives a
// round trip, and values between two codes round to the nearer one, ties to the even code; e4m3 saturates at
// 448.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>

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
