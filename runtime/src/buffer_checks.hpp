// Argument checks of Buffer operations, done on the caller's thread before anything is issued. Each failure
// is Errc::invalid_argument naming the argument and what was expected. `device`: where the Buffer wants
// tensors.
#pragma once

#include <cstdint>

#include "ferry/buffer.hpp"
#include "ferry/kernels/protocol/numeric.hpp"

namespace ferry {

struct RowShape {
  std::int64_t rows = 0;
  std::int64_t hidden = 0;
  kernels::protocol::PayloadKind kind = kernels::protocol::PayloadKind::bf16;
};

// x: [T, H] bf16 / fp32 / fp8_e4m3 with H <= max_hidden; x_scales: [T, ceil(H/128)] fp32 iff x is fp8.
RowShape check_dispatch_rows(const TensorView& x, const TensorView& x_scales, const Config& config,
                             Device device = Device::host);

// topk_idx [T, K] int64 and topk_weights [T, K] fp32 with K <= max_topk; returns K.
int check_topk(const DispatchInputs& inputs, std::int64_t num_tokens, const Config& config,
               Device device = Device::host);

// The layout was computed for this routing and this cluster.
// A device layout (Layout::on_device) only for a CUDA Buffer, with is_token_in_rank_device [T, R] uint8.
void check_layout(const Layout& layout, std::int64_t num_tokens, int num_topk, int num_ranks, int local_size,
                  Device device);

// Every weight is a finite number (a NaN would spread silently through combine and the gradients).
void check_topk_weights(const TensorView& topk_weights);

// CombineOptions: topk_weights [rows, K] fp32, bias [T, H] of y's dtype, when given.
void check_combine_options(const CombineOptions& options, std::int64_t rows, std::int64_t num_tokens,
                           int num_topk, const TensorView& y, Device device = Device::host);

// y: [rows, H] bf16 / fp32 with H <= max_hidden.
RowShape check_combine_rows(const TensorView& y, std::int64_t rows, const Config& config,
                            Device device = Device::host);

}  // namespace ferry
