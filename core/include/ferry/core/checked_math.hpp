// Sizes computed from numbers someone typed: products and sums that saturate at UINT64_MAX instead of
// wrapping, so that "too large" stays too large however the factors combine.
#pragma once

#include <cstdint>
#include <initializer_list>
#include <limits>

namespace ferry {

inline constexpr std::uint64_t kSaturated = std::numeric_limits<std::uint64_t>::max();

constexpr std::uint64_t mul_saturated(std::uint64_t a, std::uint64_t b) {
  std::uint64_t product = 0;
  return __builtin_mul_overflow(a, b, &product) ? kSaturated : product;
}

constexpr std::uint64_t add_saturated(std::uint64_t a, std::uint64_t b) {
  std::uint64_t sum = 0;
  return __builtin_add_overflow(a, b, &sum) ? kSaturated : sum;
}

constexpr std::uint64_t product_saturated(std::initializer_list<std::uint64_t> factors) {
  std::uint64_t product = 1;
  for (std::uint64_t f : factors) product = mul_saturated(product, f);
  return product;
}

}  // namespace ferry
