// fp8 casting and combine's weighted sum for the host's low-latency executor, one copy per vector width (see
// reduce.cpp). Products and sums must not fuse into FMAs, or the bits would depend on the machine and differ
// from the GPU's: this file is compiled with -ffp-contract=off (kernels/CMakeLists.txt).
#include "ferry/kernels/host/low_latency_numeric.hpp"

#include "vector_clones.hpp"

namespace ferry::kernels::host {

namespace p = protocol;

FERRY_VECTOR_CLONES void quantize_row(const p::QuantizeRow& job) {
  for (std::int64_t first = 0; first < job.hidden; first += p::kFp8BlockSize) {
    const std::int64_t left = job.hidden - first;
    const int n = static_cast<int>(left < p::kFp8BlockSize ? left : p::kFp8BlockSize);
    const std::uint16_t* __restrict__ x = job.x + first;
    std::uint8_t* __restrict__ out = job.out + first;
    const p::Fp8Scale scale = p::fp8_scale(p::block_amax(p::bf16_abs_bits_max(x, n)), job.round_scale);
    for (int i = 0; i < n; ++i) out[i] = p::float_to_e4m3_branchless(p::bf16_to_float(x[i]) * scale.scale);
    job.scales[first / p::kFp8BlockSize] = scale.scale_inv;
  }
}

FERRY_VECTOR_CLONES void weighted_sum(const p::WeightedRows& job) {
  constexpr std::int64_t kBlock = 512;
  float acc[kBlock];
  for (std::int64_t first = 0; first < job.hidden; first += kBlock) {
    const std::int64_t n = job.hidden - first < kBlock ? job.hidden - first : kBlock;
    for (std::int64_t i = 0; i < n; ++i) acc[i] = 0.0f;
    // Two rows per pass ((acc + a) + b, the order of one row at a time) halves the accumulator's loads and
    // stores. GCC's unroll-and-jam would fuse passes into a scalar loop (7x slower): kernels/CMakeLists.txt
    // turns it off for this file.
    int k = 0;
    for (; k + 2 <= job.count; k += 2) {
      const std::uint16_t* __restrict__ a = job.rows[k] + first;
      const std::uint16_t* __restrict__ b = job.rows[k + 1] + first;
      const float wa = job.weights[k];
      const float wb = job.weights[k + 1];
      for (std::int64_t i = 0; i < n; ++i)
        acc[i] = (acc[i] + wa * p::bf16_to_float(a[i])) + wb * p::bf16_to_float(b[i]);
    }
    if (k < job.count) {
      const std::uint16_t* __restrict__ a = job.rows[k] + first;
      const float wa = job.weights[k];
      for (std::int64_t i = 0; i < n; ++i) acc[i] = acc[i] + wa * p::bf16_to_float(a[i]);
    }
    std::uint16_t* __restrict__ out = job.out + first;
    for (std::int64_t i = 0; i < n; ++i) out[i] = p::float_to_bf16(acc[i]);
  }
}

}  // namespace ferry::kernels::host
