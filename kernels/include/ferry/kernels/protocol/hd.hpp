// Host/device portability for the protocol headers.
//
// Everything under ferry/kernels/protocol/ is compiled twice: by the host compiler for the CPU backend and by
// nvcc for the CUDA kernels. Functions are marked FERRY_HD (__host__ __device__ under nvcc, nothing
// otherwise) and use only what both sides have: fixed-width integers, memcpy, and the small helpers below.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define FERRY_HD __host__ __device__
#else
#define FERRY_HD
#endif

namespace ferry::kernels::protocol {

FERRY_HD inline std::uint32_t float_bits(float value) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(value);
#else
  std::uint32_t bits;
  std::memcpy(&bits, &value, sizeof(bits));
  return bits;
#endif
}

FERRY_HD inline float bits_to_float(std::uint32_t bits) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(bits);
#else
  float value;
  std::memcpy(&value, &bits, sizeof(value));
  return value;
#endif
}

FERRY_HD constexpr std::size_t align_up(std::size_t value, std::size_t alignment) {
  return (value + alignment - 1) / alignment * alignment;
}

FERRY_HD constexpr bool is_power_of_two(std::uint64_t value) {
  return value != 0 && (value & (value - 1)) == 0;
}

FERRY_HD inline int popcount32(std::uint32_t value) {
#if defined(__CUDA_ARCH__)
  return __popc(value);
#else
  return __builtin_popcount(value);
#endif
}

FERRY_HD inline int popcount64(std::uint64_t value) {
#if defined(__CUDA_ARCH__)
  return __popcll(value);
#else
  return __builtin_popcountll(value);
#endif
}

}  // namespace ferry::kernels::protocol
