#include "low_latency_checks.hpp"

#include <cstring>
#include <limits>

#include "ferry/core/error.hpp"

namespace ferry {

namespace {

namespace p = kernels::protocol;

[[noreturn]] void reject(const std::string& message) {
  fail(Errc::invalid_argument, message);
}

std::string shape_text(const std::vector<std::int64_t>& shape, DType dtype) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) text += (i ? ", " : "") + std::to_string(shape[i]);
  return text + "] " + to_string(dtype);
}

void require_on(const TensorView& view, const char* name, Device where) {
  if (view.device() != where) {
    reject(std::string(name) + " is " + view.describe() + " but this LowLatencyBuffer runs on the " +
           (where == Device::host ? "host" : "GPU"));
  }
  if (view.numel() > 0 && view.data() == nullptr) reject(std::string(name) + " has no data");
}

}  // namespace

p::LowLatencyShape check_low_latency_shape(std::int64_t max_tokens, std::int64_t hidden, int num_ranks,
                                           std::int64_t num_experts, bool fp8, std::size_t region_bytes) {
  if (max_tokens < 1 || max_tokens > p::kLowLatencyMaxTokens) {
    reject("num_max_dispatch_tokens_per_rank must be in [1, " + std::to_string(p::kLowLatencyMaxTokens) +
           "], not " + std::to_string(max_tokens));
  }
  if (hidden < 8 || hidden % 8 != 0)
    reject("hidden must be a positive multiple of 8 (16-byte rows), not " + std::to_string(hidden));
  if (fp8 && hidden % p::kFp8BlockSize != 0) {
    reject("hidden " + std::to_string(hidden) +
           " is not a multiple of 128: fp8 dispatch scales every 128 "
           "channels (use_fp8 = false sends bf16)");
  }
  if (num_experts < 1 || num_experts % num_ranks != 0) {
    reject("num_experts must be a positive multiple of the " + std::to_string(num_ranks) + " ranks, not " +
           std::to_string(num_experts));
  }
  p::LowLatencyShape shape{max_tokens, hidden, num_ranks, num_experts};
  const p::LowLatencyLayout layout = p::make_low_latency_layout(shape);
  if (layout.counts > std::numeric_limits<std::uint32_t>::max())
    reject(std::to_string(num_ranks) + " ranks need signal words beyond the 32-bit offsets of the proxy");
  if (p::low_latency_largest_put(layout) > p::kLowLatencyMaxPutBytes) {
    reject(std::to_string(max_tokens) + " tokens per rank of hidden " + std::to_string(hidden) +
           " make one expert's block of rows " + std::to_string(p::low_latency_largest_put(layout)) +
           " bytes, beyond the 32-bit size of a fabric put (lower num_max_dispatch_tokens_per_rank)");
  }
  if (region_bytes > 0) {
    const std::size_t needed = layout.total_bytes;
    if (needed > region_bytes) {
      reject("the low-latency buffer has " + std::to_string(region_bytes) + " bytes but " +
             std::to_string(max_tokens) + " tokens per rank of hidden " + std::to_string(hidden) + " to " +
             std::to_string(num_experts) + " experts on " + std::to_string(num_ranks) + " ranks need " +
             std::to_string(needed) + " (get_low_latency_rdma_size_hint)");
    }
  }
  return shape;
}

int check_low_latency_inputs(const TensorView& x, const TensorView& topk_idx, const p::LowLatencyShape& shape,
                             Device where) {
  require_on(x, "x", where);
  require_on(topk_idx, "topk_idx", where);
  if (x.dim() != 2 || x.dtype() != DType::bf16)
    reject("x must be [num_tokens, hidden] bf16, not " + x.describe());
  if (x.size(1) != shape.hidden)
    reject("x is " + x.describe() + " but hidden is " + std::to_string(shape.hidden));
  if (x.size(0) > shape.max_tokens) {
    reject("x has " + std::to_string(x.size(0)) +
           " tokens, more than num_max_dispatch_tokens_per_rank = " + std::to_string(shape.max_tokens));
  }
  if (topk_idx.dim() != 2 || topk_idx.dtype() != DType::int64 || topk_idx.size(0) != x.size(0)) {
    reject("topk_idx must be [" + std::to_string(x.size(0)) + ", num_topk] int64, not " +
           topk_idx.describe());
  }
  if (topk_idx.size(1) < 1 || topk_idx.size(1) > p::kLowLatencyMaxTopk) {
    reject("topk_idx has " + std::to_string(topk_idx.size(1)) +
           " slots per token; the low-latency mode takes 1 "
           "to " +
           std::to_string(p::kLowLatencyMaxTopk));
  }
  return static_cast<int>(topk_idx.size(1));
}

void check_dispatch_flags(const LowLatencyDispatchOptions& options) {
  if (options.use_ue8m0 && !options.use_fp8) reject("use_ue8m0 needs use_fp8 (UE8M0 packs fp8 scales)");
  if (options.use_ue8m0 && !options.round_scale)
    reject("use_ue8m0 needs round_scale (UE8M0 holds power-of-two scales only)");
  if (options.round_scale && !options.use_fp8) reject("round_scale needs use_fp8 (bf16 rows have no scales)");
  if (options.async_finish && options.return_recv_hook) {
    reject(
        "async_finish and return_recv_hook exclude each other: the hook takes the receives on the caller's "
        "thread");
  }
}

void check_optional(const TensorView& view, const char* name, DType dtype, std::vector<std::int64_t> shape,
                    Device where) {
  if (view.empty()) return;
  require_on(view, name, where);
  bool same = view.dtype() == dtype && view.dim() == static_cast<int>(shape.size());
  for (std::size_t d = 0; same && d < shape.size(); ++d) same = view.size(static_cast<int>(d)) == shape[d];
  if (!same) reject(std::string(name) + " must be " + shape_text(shape, dtype) + ", not " + view.describe());
}

void reject_expert(const std::int64_t* topk_idx, const p::SlotProblem& problem, int num_topk,
                   std::int64_t num_experts) {
  const std::int64_t bad = problem.index;
  if (problem.duplicate) {
    reject("topk_idx[" + std::to_string(bad / num_topk) + "] names expert " + std::to_string(topk_idx[bad]) +
           " twice (slot " + std::to_string(bad % num_topk) + "): a token goes to an expert once");
  }
  reject("topk_idx[" + std::to_string(bad / num_topk) + "][" + std::to_string(bad % num_topk) +
         "] = " + std::to_string(topk_idx[bad]) + " is neither -1 nor an expert in [0, " +
         std::to_string(num_experts) + ")");
}

void check_same_routing(const TensorView& topk_idx, const std::vector<std::int64_t>& dispatched,
                        std::int64_t num_tokens, int num_topk) {
  require_on(topk_idx, "topk_idx", Device::host);
  if (topk_idx.dim() != 2 || topk_idx.dtype() != DType::int64 || topk_idx.size(0) != num_tokens ||
      topk_idx.size(1) != num_topk) {
    reject("topk_idx must be the dispatch's [" + std::to_string(num_tokens) + ", " +
           std::to_string(num_topk) + "] int64, not " + topk_idx.describe());
  }
  const auto* ids = topk_idx.data_as<const std::int64_t>();
  for (std::size_t i = 0; i < dispatched.size(); ++i) {
    if (ids[i] == dispatched[i]) continue;
    reject("topk_idx[" + std::to_string(i / num_topk) + "][" + std::to_string(i % num_topk) + "] is " +
           std::to_string(ids[i]) + " but the handle's dispatch sent it to " + std::to_string(dispatched[i]) +
           ": combine takes the dispatch's topk_idx");
  }
}

}  // namespace ferry
