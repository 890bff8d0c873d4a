// Element types a message can carry, and exact conversions between them and fp32.
//
// bf16 and fp8 e4m3 (the "fn" variant: no infinities, one NaN pattern per sign, largest finite 448) are
// stored as raw bits so host and device agree to the bit. float -> narrow conversions round to nearest, ties
// to even; e4m3 saturates to +-448 (CUDA's __NV_SATFINITE) instead of producing NaN for large values.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ferry/kernels/protocol/hd.hpp"

namespace ferry::kernels::protocol {

enum class PayloadKind : std::uint8_t { bf16 = 0, fp32 = 1, fp8_e4m3 = 2 };

FERRY_HD constexpr int element_bytes(PayloadKind kind) {
  return kind == PayloadKind::fp32 ? 4 : kind == PayloadKind::bf16 ? 2 : 1;
}

// fp8 payloads carry one fp32 scale per block of this many values (the last block may be shorter).
inline constexpr int kFp8BlockSize = 128;

FERRY_HD constexpr std::int64_t scale_blocks(std::int64_t hidden) {
  return (hidden + kFp8BlockSize - 1) / kFp8BlockSize;
}

FERRY_HD inline float bf16_to_float(std::uint16_t bits) {
  return bits_to_float(std::uint32_t{bits} << 16);
}

// The one NaN each narrow type is written with, whatever the NaN's sign and payload: the GPU's arithmetic
// returns the canonical NaN while x86 keeps an operand's sign and payload (and makes invalid operations
// negative), so only a canonical NaN gives the same bits on host and device.
inline constexpr std::uint16_t kBf16CanonicalNan = 0x7fc0;
inline constexpr std::uint8_t kE4m3CanonicalNan = 0x7f;

// Written without a branch so that the host compiler vectorizes the loops that round whole rows.
FERRY_HD inline std::uint16_t float_to_bf16(float value) {
  const std::uint32_t bits = float_bits(value);
  const std::uint32_t rounded = (bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16;  // ties to even
  return static_cast<std::uint16_t>((bits & 0x7fffffffu) > 0x7f800000u ? std::uint32_t{kBf16CanonicalNan}
                                                                       : rounded);
}

FERRY_HD inline float e4m3_to_float(std::uint8_t bits) {
  std::uint32_t sign = std::uint32_t{bits & 0x80u} << 24;
  std::uint32_t exponent = (bits >> 3) & 0xfu;
  std::uint32_t mantissa = bits & 0x7u;
  if (exponent == 0xf && mantissa == 0x7) return bits_to_float(sign | 0x7fc00000u);
  if (exponent == 0) {
    float magnitude = static_cast<float>(mantissa) * (1.0f / 512.0f);  // mantissa/8 * 2^-6, exact
    return sign ? -magnitude : magnitude;
  }
  return bits_to_float(sign | ((exponent - 7 + 127) << 23) | (mantissa << 20));
}

FERRY_HD inline std::uint8_t float_to_e4m3(float value) {
  constexpr std::uint32_t kMaxFiniteBits = 0x43e00000u;  // 448.0f
  constexpr std::uint8_t kMaxFinite = 0x7e;
  std::uint32_t bits = float_bits(value);
  auto sign = static_cast<std::uint8_t>((bits >> 24) & 0x80u);
  std::uint32_t magnitude = bits & 0x7fffffffu;
  if (magnitude > 0x7f800000u) return kE4m3CanonicalNan;      // NaN, sign dropped
  if (magnitude >= kMaxFiniteBits) return sign | kMaxFinite;  // saturate, infinities included
  int exponent = static_cast<int>(magnitude >> 23) - 127;
  if (exponent >= -6) {  // normal in e4m3: keep 3 of 23 mantissa bits
    std::uint32_t mantissa = magnitude & 0x7fffffu;
    std::uint32_t result = (static_cast<std::uint32_t>(exponent + 7) << 3) | (mantissa >> 20);
    std::uint32_t rest = mantissa & 0xfffffu;
    if (rest > 0x80000u || (rest == 0x80000u && (result & 1u))) ++result;  // a carry bumps the exponent
    return sign | static_cast<std::uint8_t>(result > kMaxFinite ? kMaxFinite : result);
  }
  if (exponent < -10) return sign;  // below half the smallest subnormal (2^-10): rounds to zero
  // Subnormal in e4m3: value / 2^-9 = significand * 2^(exponent - 14), rounded to an integer 0..8.
  std::uint32_t significand = (magnitude & 0x7fffffu) | 0x800000u;
  int shift = 14 - exponent;  // 21..24
  std::uint32_t result = significand >> shift;
  std::uint32_t rest = significand & ((1u << shift) - 1u);
  std::uint32_t half = 1u << (shift - 1);
  if (rest > half || (rest == half && (result & 1u))) ++result;  // 8 is the smallest normal, encoded as 8
  return sign | static_cast<std::uint8_t>(result);
}

// Element i of a bf16 or fp32 row as fp32 (combine rows and sums; fp8 rows are never summed).
FERRY_HD inline float load_element(PayloadKind kind, const void* row, std::int64_t i) {
  if (kind == PayloadKind::fp32) return static_cast<const float*>(row)[i];
  return bf16_to_float(static_cast<const std::uint16_t*>(row)[i]);
}

FERRY_HD inline void store_element(PayloadKind kind, void* row, std::int64_t i, float value) {
  if (kind == PayloadKind::fp32) {
    static_cast<float*>(row)[i] = value;
  } else {
    static_cast<std::uint16_t*>(row)[i] = float_to_bf16(value);
  }
}

// One reduction of combine, element by element in fp32 and in exactly this order, rounded once to `kind`:
//   acc = bias[i] (or 0); then for each term in order: acc += term[i], where the optional group, summed first
//   (0 + group[0][i] + group[1][i] + ...) and rounded to `kind`, stands at position group_at among the terms;
//   out[i] = acc rounded to `kind`.
// The forwarder sums its local ranks' rows (terms only); the source sums the partial rows of the nodes in
// node order, its own node's rows being the group (summed and rounded as a forwarder would have, so a token's
// result does not depend on which of its nodes is the source's own). Weights use the same reduction with kind
// fp32.
// Rows one reduction may add: a forwarder's local ranks, or a source's remote nodes.
inline constexpr int kMaxReduceRows = 64;

struct ReduceRows {
  PayloadKind kind = PayloadKind::bf16;  // of every row, the bias and the output (bf16 or fp32)
  std::int64_t hidden = 0;               // elements per row
  const std::byte* const* terms = nullptr;
  int num_terms = 0;
  const std::byte* const* group = nullptr;
  int group_size = 0;  // 0: no group
  int group_at = 0;    // 0 .. num_terms
  const std::byte* bias = nullptr;
  std::byte* out = nullptr;
};

// sum[i] += row[i] for each row in order, over n elements starting at element `begin` of every row. Two rows
// per pass, written out by hand: (sum + a) + b is the plain loop's order, and a loop the compiler can
// vectorize (left to itself, GCC fuses two iterations of the row loop and then gives up vectorizing the
// result).
template <typename Row, typename Load>
FERRY_HD inline void add_rows(float* __restrict__ sum, const std::byte* const* rows, int count,
                              std::int64_t begin, std::int64_t n, Load load) {
  int r = 0;
  for (; r + 2 <= count; r += 2) {
    const Row* __restrict__ a = reinterpret_cast<const Row*>(rows[r]) + begin;
    const Row* __restrict__ b = reinterpret_cast<const Row*>(rows[r + 1]) + begin;
    for (std::int64_t i = 0; i < n; ++i) sum[i] = (sum[i] + load(a[i])) + load(b[i]);
  }
  if (r < count) {
    const Row* __restrict__ a = reinterpret_cast<const Row*>(rows[r]) + begin;
    for (std::int64_t i = 0; i < n; ++i) sum[i] += load(a[i]);
  }
}

// The reduction on one thread, a block of elements at a time with the element type fixed per pass so the host
// compiler vectorizes it; per element the additions are those of a plain loop, so the bits are the same.
template <typename Row, typename Load, typename Store>
FERRY_HD inline void reduce_rows_as(const ReduceRows& job, Load load, Store store) {
  constexpr std::int64_t kBlock = 512;
  float acc[kBlock];
  float part[kBlock];
  const bool has_group = job.group_size > 0;
  const int before = has_group ? job.group_at : job.num_terms;  // terms added ahead of the group
  for (std::int64_t begin = 0; begin < job.hidden; begin += kBlock) {
    const std::int64_t n = job.hidden - begin < kBlock ? job.hidden - begin : kBlock;
    if (job.bias != nullptr) {
      const Row* bias = reinterpret_cast<const Row*>(job.bias) + begin;
      for (std::int64_t i = 0; i < n; ++i) acc[i] = load(bias[i]);
    } else {
      for (std::int64_t i = 0; i < n; ++i) acc[i] = 0.0f;
    }
    add_rows<Row>(acc, job.terms, before, begin, n, load);
    if (has_group) {
      for (std::int64_t i = 0; i < n; ++i) part[i] = 0.0f;
      add_rows<Row>(part, job.group, job.group_size, begin, n, load);
      for (std::int64_t i = 0; i < n; ++i) acc[i] += load(store(part[i]));
      add_rows<Row>(acc, job.terms + before, job.num_terms - before, begin, n, load);
    }
    Row* target = reinterpret_cast<Row*>(job.out) + begin;
    for (std::int64_t i = 0; i < n; ++i) target[i] = store(acc[i]);
  }
}

FERRY_HD inline void reduce_rows(const ReduceRows& job) {
  if (job.kind == PayloadKind::fp32) {
    reduce_rows_as<float>(
        job, [](float v) { return v; }, [](float v) { return v; });
  } else {
    reduce_rows_as<std::uint16_t>(
        job, [](std::uint16_t v) { return bf16_to_float(v); }, [](float v) { return float_to_bf16(v); });
  }
}

}  // namespace ferry::kernels::protocol
