#include "bench/dispatch_inputs.hpp"

#include "bench/dispatch_rows.hpp"
#include "ferry/kernels/protocol/numeric.hpp"

namespace ferry::bench {

void make_inputs(const DispatchBenchOptions& o, const RoutingSpec& spec, int rank, RankInputs& in) {
  in.routing = generate_routing(spec, rank);
  const std::int64_t T = o.tokens, H = o.hidden, blocks = scale_blocks(H);
  in.x.resize(static_cast<std::size_t>(T * H) * (o.fp8 ? 1 : 2));
  if (o.fp8) in.scales.resize(static_cast<std::size_t>(T * blocks));
  for (std::int64_t t = 0; t < T; ++t) {
    if (o.fp8) {
      fill_fp8_row(rank, t, H, in.x.data() + t * H, in.scales.data() + t * blocks);
    } else {
      fill_bf16_row(rank, t, H, reinterpret_cast<std::uint16_t*>(in.x.data()) + t * H);
    }
  }
  in.view.x = TensorView(in.x.data(), {T, H}, o.fp8 ? DType::fp8_e4m3 : DType::bf16);
  if (o.fp8) in.view.x_scales = TensorView(in.scales.data(), {T, blocks}, DType::fp32);
  in.view.topk_idx = TensorView(in.routing.topk_idx.data(), {T, o.topk}, DType::int64);
  in.view.topk_weights = TensorView(in.routing.topk_weights.data(), {T, o.topk}, DType::fp32);
}

Tensor dequantized_rows(const DispatchResult& got, std::int64_t hidden) {
  namespace p = kernels::protocol;
  const std::int64_t rows = got.handle.recv_rows(), blocks = scale_blocks(hidden);
  Tensor y({rows, hidden}, DType::bf16);
  const auto* bits = got.recv_x.data_as<std::uint8_t>();
  const auto* scales = got.recv_x_scales.data_as<float>();
  auto* out = y.data_as<std::uint16_t>();
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < hidden; ++c) {
      const float value = p::e4m3_to_float(bits[r * hidden + c]) * scales[r * blocks + c / kScaleBlock];
      out[r * hidden + c] = p::float_to_bf16(value);
    }
  }
  return y;
}

}  // namespace ferry::bench
