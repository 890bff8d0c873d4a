#include "buffer_checks.hpp"

#include <cmath>
#include <string>

#include "ferry/core/error.hpp"

namespace ferry {

namespace {

namespace p = kernels::protocol;

[[noreturn]] void reject(const std::string& message) {
  fail(Errc::invalid_argument, message);
}

void require_matrix(const TensorView& view, const char* name, Device device) {
  if (view.dim() != 2) reject(std::string(name) + " must be a 2-D tensor, not " + view.describe());
  if (view.device() != device) {
    reject(std::string(name) + " is " + view.describe() + " but this Buffer runs " +
           (device == Device::host ? "the host backend" : "on the GPU (pass device tensors)"));
  }
  if (view.numel() > 0 && view.data() == nullptr) reject(std::string(name) + " has no data");
}

std::string shape(std::int64_t rows, std::int64_t cols, DType dtype) {
  std::string text = "[";
  text += std::to_string(rows);
  text += ", ";
  text += std::to_string(cols);
  text += "] ";
  text += to_string(dtype);
  return text;
}

void require_hidden(const TensorView& view, const char* name, const Config& config) {
  if (view.size(1) < 1 || view.size(1) > config.max_hidden) {
    reject(std::string(name) + " is " + view.describe() +
           ": its hidden size must be in [1, Config::max_hidden = " + std::to_string(config.max_hidden) +
           "]");
  }
}

}  // namespace

RowShape check_dispatch_rows(const TensorView& x, const TensorView& x_scales, const Config& config,
                             Device device) {
  require_matrix(x, "x", device);
  RowShape rows{x.size(0), x.size(1), p::PayloadKind::bf16};
  switch (x.dtype()) {
    case DType::bf16:
      rows.kind = p::PayloadKind::bf16;
      break;
    case DType::fp32:
      rows.kind = p::PayloadKind::fp32;
      break;
    case DType::fp8_e4m3:
      rows.kind = p::PayloadKind::fp8_e4m3;
      break;
    default:
      reject("x must be bf16, fp32 or fp8_e4m3, not " + x.describe());
  }
  require_hidden(x, "x", config);
  std::int64_t blocks = p::scale_blocks(rows.hidden);
  if (rows.kind == p::PayloadKind::fp8_e4m3) {
    if (x_scales.empty())
      reject("x is " + x.describe() + " but x_scales is missing: fp8 rows need fp32 scales");
    require_matrix(x_scales, "x_scales", device);
    if (x_scales.dtype() != DType::fp32 || x_scales.size(0) != rows.rows || x_scales.size(1) != blocks) {
      reject("x_scales must be " + shape(rows.rows, blocks, DType::fp32) +
             " (one scale per 128 values of x " + x.describe() + "), not " + x_scales.describe());
    }
  } else if (!x_scales.empty()) {
    reject("x_scales is " + x_scales.describe() + " but x is " + x.describe() +
           ": scales go only with fp8_e4m3");
  }
  return rows;
}

int check_topk(const DispatchInputs& inputs, std::int64_t num_tokens, const Config& config, Device device) {
  require_matrix(inputs.topk_idx, "topk_idx", device);
  if (inputs.topk_idx.dtype() != DType::int64 || inputs.topk_idx.size(0) != num_tokens) {
    reject("topk_idx must be [" + std::to_string(num_tokens) + ", K] int64 (one row per row of x), not " +
           inputs.topk_idx.describe());
  }
  std::int64_t K = inputs.topk_idx.size(1);
  if (K < 1 || K > config.max_topk) {
    reject("topk_idx is " + inputs.topk_idx.describe() +
           ": K must be in [1, Config::max_topk = " + std::to_string(config.max_topk) + "]");
  }
  require_matrix(inputs.topk_weights, "topk_weights", device);
  if (inputs.topk_weights.dtype() != DType::fp32 || inputs.topk_weights.size(0) != num_tokens ||
      inputs.topk_weights.size(1) != K) {
    reject("topk_weights must be " + shape(num_tokens, K, DType::fp32) + " like topk_idx, not " +
           inputs.topk_weights.describe());
  }
  return static_cast<int>(K);
}

void check_layout(const Layout& layout, std::int64_t num_tokens, int num_topk, int num_ranks,
                  int local_size) {
  if (layout.num_tokens != num_tokens || layout.num_topk != num_topk || layout.num_ranks != num_ranks ||
      layout.local_size != local_size) {
    reject("the layout was computed for " + std::to_string(layout.num_tokens) + " tokens x " +
           std::to_string(layout.num_topk) + " slots on " + std::to_string(layout.num_ranks) + " ranks (" +
           std::to_string(layout.local_size) + " per node), but this dispatch has " +
           std::to_string(num_tokens) + " x " + std::to_string(num_topk) + " on " +
           std::to_string(num_ranks) + " (" + std::to_string(local_size) + " per node)");
  }
  if (layout.on_device()) {
    // A layout a CUDA Buffer computed on the GPU keeps is_token_in_rank there only.
    const Tensor& in_rank = layout.is_token_in_rank_device;
    if (in_rank.dim() != 2 || in_rank.size(0) != num_tokens || in_rank.size(1) != num_ranks) {
      reject("the layout's is_token_in_rank is " + in_rank.view().describe() + ", not [tokens, ranks] = [" +
             std::to_string(num_tokens) + ", " + std::to_string(num_ranks) + "]");
    }
  } else if (layout.is_token_in_rank.size() != static_cast<std::size_t>(num_tokens) * num_ranks) {
    reject("the layout's is_token_in_rank has " + std::to_string(layout.is_token_in_rank.size()) +
           " entries, not tokens x ranks = " + std::to_string(num_tokens * num_ranks));
  }
  if (layout.num_experts <= 0 || layout.num_experts % num_ranks != 0) {
    reject("the layout's num_experts " + std::to_string(layout.num_experts) +
           " is not a positive multiple of the " + std::to_string(num_ranks) + " ranks");
  }
}

void check_topk_weights(const TensorView& topk_weights) {
  const auto* weights = topk_weights.data_as<const float>();
  const std::int64_t K = topk_weights.size(1);
  for (std::int64_t i = 0; i < topk_weights.numel(); ++i) {
    if (!std::isfinite(weights[i])) {
      reject("topk_weights[" + std::to_string(i / K) + "][" + std::to_string(i % K) +
             "] = " + std::to_string(weights[i]) + " is not a finite number");
    }
  }
}

void check_combine_options(const CombineOptions& options, std::int64_t rows, std::int64_t num_tokens,
                           int num_topk, const TensorView& y, Device device) {
  if (!options.topk_weights.empty()) {
    require_matrix(options.topk_weights, "topk_weights", device);
    if (options.topk_weights.dtype() != DType::fp32 || options.topk_weights.size(0) != rows ||
        options.topk_weights.size(1) != num_topk) {
      reject("combine's topk_weights must be " + shape(rows, num_topk, DType::fp32) +
             " (one row per received row, like the dispatch's recv_topk_weights), not " +
             options.topk_weights.describe());
    }
  }
  if (!options.bias.empty()) {
    require_matrix(options.bias, "bias", device);
    if (options.bias.dtype() != y.dtype() || options.bias.size(0) != num_tokens ||
        options.bias.size(1) != y.size(1)) {
      reject("combine's bias must be " + shape(num_tokens, y.size(1), y.dtype()) +
             " (one row per token, like the output), not " + options.bias.describe());
    }
  }
}

RowShape check_combine_rows(const TensorView& y, std::int64_t rows, const Config& config, Device device) {
  require_matrix(y, "y", device);
  RowShape shape_of_y{y.size(0), y.size(1), p::PayloadKind::bf16};
  if (y.dtype() == DType::fp32) {
    shape_of_y.kind = p::PayloadKind::fp32;
  } else if (y.dtype() != DType::bf16) {
    reject("y must be bf16 or fp32 (combine sums rows), not " + y.describe());
  }
  require_hidden(y, "y", config);
  if (y.size(0) != rows) {
    reject("y is " + y.describe() + " but the handle's dispatch received into " + std::to_string(rows) +
           " rows: y must have one row per received row");
  }
  return shape_of_y;
}

}  // namespace ferry
