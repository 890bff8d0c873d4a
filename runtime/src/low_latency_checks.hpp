// Argument checks of the low-latency mode, done on the caller's thread before anything is communicated. Each
// failure is Errc::invalid_argument naming the argument and what was expected.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "ferry/kernels/protocol/low_latency_roles.hpp"
#include "ferry/low_latency.hpp"

namespace ferry {

// The shape of a call (max tokens, hidden, experts) on `num_ranks` ranks, for a region of `region_bytes`
// (0: not checked): ranges, hidden a multiple of 8 (of 128 for fp8), experts a multiple of the ranks, and the
// region large enough (the message names the size hint).
kernels::protocol::LowLatencyShape check_low_latency_shape(std::int64_t max_tokens, std::int64_t hidden,
                                                           int num_ranks, std::int64_t num_experts, bool fp8,
                                                           std::size_t region_bytes);

// x [T, H] bf16 with T <= max tokens and H the shape's; topk_idx [T, K] int64, K <= kLowLatencyMaxTopk; both
// on `where`, the buffer's device. Returns K.
int check_low_latency_inputs(const TensorView& x, const TensorView& topk_idx,
                             const kernels::protocol::LowLatencyShape& shape, Device where = Device::host);

void check_dispatch_flags(const LowLatencyDispatchOptions& options);

// A tensor of `dtype` and `shape` on `where`, when given (DeepEP's per-call statistics tensors, the mask,
// out).
void check_optional(const TensorView& view, const char* name, DType dtype, std::vector<std::int64_t> shape,
                    Device where = Device::host);

// The first expert id outside [0, E) and not -1, or named twice by one token, with its token and slot
// (assign_slots' finding).
[[noreturn]] void reject_expert(const std::int64_t* topk_idx, const kernels::protocol::SlotProblem& problem,
                                int num_topk, std::int64_t num_experts);

// The combine's topk_idx must be its dispatch's.
void check_same_routing(const TensorView& topk_idx, const std::vector<std::int64_t>& dispatched,
                        std::int64_t num_tokens, int num_topk);

}  // namespace ferry
