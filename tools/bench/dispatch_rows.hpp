// Token rows for the dispatch benchmarks, in plain C++ (the MPI baseline compiles it too).
//
// Element (c) of source rank s's token t is digit(s, t, c) * scale(s, t, c / 128): a digit in [-7, 7] and a
// power-of-two scale in [1/4, 4]. Every such value is exact in bf16 and, as digit plus fp32 block scale, in
// fp8 e4m3; sums of up to 36 copies (|7 * 36| < 256) stay exact in bf16. So a receiver recomputes any row
// from its source rank and token alone, and a combine of rows that every receiver returns unchanged is
// exactly x * copies.
#pragma once

#include <cstddef>
#include <cstdint>

namespace ferry::bench {

inline constexpr std::int64_t kScaleBlock = 128;  // fp8 values per fp32 scale (ferry's and DeepEP's)

inline std::int64_t scale_blocks(std::int64_t hidden) {
  return (hidden + kScaleBlock - 1) / kScaleBlock;
}

// Bytes of one token row as it travels: bf16 values, or fp8 values plus one fp32 scale per block.
inline std::size_t row_bytes(std::int64_t hidden, bool fp8) {
  return fp8 ? static_cast<std::size_t>(hidden + 4 * scale_blocks(hidden))
             : static_cast<std::size_t>(2 * hidden);
}

int row_digit(int source_rank, std::int64_t token, std::int64_t column);
float block_scale(int source_rank, std::int64_t token, std::int64_t block);
inline float row_value(int source_rank, std::int64_t token, std::int64_t column) {
  return static_cast<float>(row_digit(source_rank, token, column)) *
         block_scale(source_rank, token, column / kScaleBlock);
}

// Exact encodings of the values above (no rounding is ever needed, so none is implemented).
std::uint16_t exact_bf16(float value);  // value must be exact in bf16
float bf16_value(std::uint16_t bits);
std::uint8_t e4m3_of_digit(int digit);  // digit in [-7, 7]

// Writes token t of source_rank: hidden bf16 values; or hidden e4m3 digits and scale_blocks(hidden) scales.
void fill_bf16_row(int source_rank, std::int64_t token, std::int64_t hidden, std::uint16_t* row);
void fill_fp8_row(int source_rank, std::int64_t token, std::int64_t hidden, std::uint8_t* row, float* scales);

}  // namespace ferry::bench
