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
    for (int k = 0; k < job.count; ++k) {
      const std::uint16_t* __restrict__ row = job.rows[k] + first;
      const float weight = job.weights[k];
      for (std::int64_t i = 0; i < n; ++i) acc[i] = acc[i] + weight * p::bf16_to_float(row[i]);
    }
    std::uint16_t* __restrict__ out = job.out + first;
    for (std::int64_t i = 0; i < n; ++i) out[i] = p::float_to_bf16(acc[i]);
  }
}

}  // namespace ferry::kernels::host
