// Deterministic token rows: see dispatch_rows.hpp.
#include "bench/dispatch_rows.hpp"

#include <cstdlib>
#include <cstring>

namespace ferry::bench {

int row_digit(int source_rank, std::int64_t token, std::int64_t column) {
  // Cheap enough for hundreds of millions of elements, and different for neighbouring ranks, tokens and
  // columns.
  return static_cast<int>((source_rank * 7 + token * 13 + column * 3) % 15) - 7;
}

float block_scale(int source_rank, std::int64_t token, std::int64_t block) {
  static constexpr float kScales[5] = {0.25f, 0.5f, 1.0f, 2.0f, 4.0f};
  return kScales[(source_rank + token * 3 + block) % 5];
}

std::uint16_t exact_bf16(float value) {
  std::uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  return static_cast<std::uint16_t>(bits >> 16);
}

float bf16_value(std::uint16_t bits) {
  std::uint32_t wide = std::uint32_t{bits} << 16;
  float value = 0;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

std::uint8_t e4m3_of_digit(int digit) {
  if (digit == 0) return 0;
  const std::uint8_t sign = digit < 0 ? 0x80 : 0x00;
  const int magnitude = std::abs(digit);
  const int exponent = magnitude >= 4 ? 2 : magnitude >= 2 ? 1 : 0;  // floor(log2(magnitude))
  const int mantissa = (magnitude << (3 - exponent)) & 7;            // 3 fraction bits, exact for 1..7
  return static_cast<std::uint8_t>(sign | ((exponent + 7) << 3) | mantissa);
}

void fill_bf16_row(int source_rank, std::int64_t token, std::int64_t hidden, std::uint16_t* row) {
  for (std::int64_t c = 0; c < hidden; ++c) row[c] = exact_bf16(row_value(source_rank, token, c));
}

void fill_fp8_row(int source_rank, std::int64_t token, std::int64_t hidden, std::uint8_t* row,
                  float* scales) {
  for (std::int64_t c = 0; c < hidden; ++c) row[c] = e4m3_of_digit(row_digit(source_rank, token, c));
  for (std::int64_t b = 0; b < scale_blocks(hidden); ++b) scales[b] = block_scale(source_rank, token, b);
}

}  // namespace ferry::bench
