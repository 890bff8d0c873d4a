#include "ferry/model/footprint.hpp"

#include <algorithm>

#include "ferry/core/checked_math.hpp"

namespace ferry::model {

Footprint estimate_footprint(const ModelConfig& config, std::uint64_t rows) {
  using U = std::uint64_t;
  const auto positive = [](int v) { return static_cast<U>(std::max(v, 1)); };
  const U C = positive(config.dim), V = positive(config.vocab), T = positive(config.seq);
  const U F = positive(config.ffn_hidden), H = positive(config.expert_hidden), E = positive(config.experts);
  const U K = positive(config.topk), heads = positive(config.heads);
  const U layers = positive(config.layers),
          dense = static_cast<U>(std::clamp(config.n_dense, 0, config.layers));
  const U moe = layers - dense;
  const U blocks = layers + (config.mtp ? 1 : 0);
  const U moe_blocks = moe + (config.mtp && moe > 0 ? 1 : 0);
  const U dense_blocks = blocks - moe_blocks;

  // Parameters: embeddings and head, per block attention and norms, a dense FFN or the MoE FFN (router,
  // shared expert, every routed expert), the MTP module's norms and projection.
  const U attention = product_saturated({4, C, C}) + 2 * C;
  const U dense_ffn = product_saturated({3, C, F});
  const U moe_ffn = add_saturated(product_saturated({C, E}), product_saturated({E + 1, 3, C, H}));
  U parameters = add_saturated(product_saturated({2, V, C}), product_saturated({T + 1, C}));
  parameters = add_saturated(parameters, mul_saturated(blocks, attention));
  parameters = add_saturated(parameters, mul_saturated(dense_blocks, dense_ffn));
  parameters = add_saturated(parameters, mul_saturated(moe_blocks, moe_ffn));
  if (config.mtp) parameters = add_saturated(parameters, add_saturated(product_saturated({2, C, C}), 3 * C));

  // Activations per token of one block, in floats, forward and backward: norms, q/k/v, context, residuals
  // (16 C), a row of attention scores per head, and the wider FFN: dense (h13, its activation, the
  // gradient: 6 F) or MoE (router scores; each of the top-k experts' and the shared expert's rows in and out
  // and hidden activations).
  const U tokens = mul_saturated(rows, T);
  const U attention_row = mul_saturated(heads, T);
  const U dense_row = 6 * F;
  const U moe_row = add_saturated(4 * E, product_saturated({K + 1, 2, add_saturated(2 * C, 3 * H)}));
  const U block_row = add_saturated(add_saturated(16 * C, 2 * attention_row), std::max(dense_row, moe_row));
  // Embeddings, head and loss: logits and their gradient (main and MTP), the MTP's concatenation.
  const U edge_row = add_saturated(product_saturated({4, V}), 8 * C);
  const U floats_per_token = add_saturated(mul_saturated(blocks, block_row), edge_row);
  Footprint footprint;
  footprint.parameters = parameters;
  footprint.activation_bytes = product_saturated({tokens, floats_per_token, sizeof(float)});
  const char *seq = "ModelConfig.seq", *rows_field = "rows";
  const TensorSize tensors[] = {
      {"attention q/k/v", mul_saturated(tokens, 3 * C), {rows_field, seq, "ModelConfig.dim"}},
      {"dense FFN activations", mul_saturated(tokens, 2 * F), {rows_field, seq, "ModelConfig.ffn_hidden"}},
      {"logits", mul_saturated(tokens, V), {rows_field, seq}},
      {"router scores", mul_saturated(tokens, E), {rows_field, seq, "ModelConfig.experts"}},
      {"attention scores", mul_saturated(tokens, attention_row), {rows_field, seq, "ModelConfig.heads"}},
      {"expert activations",
       product_saturated({tokens, K + 1, 2 * H}),
       {rows_field, seq, "ModelConfig.topk", "ModelConfig.expert_hidden"}},
      {"parameters",
       parameters,
       {"ModelConfig.dim", "ModelConfig.layers", "ModelConfig.experts", "ModelConfig.expert_hidden",
        "ModelConfig.ffn_hidden"}},
  };
  for (const TensorSize& t : tensors)
    if (t.elements > footprint.largest.elements) footprint.largest = t;
  return footprint;
}

}  // namespace ferry::model
