// Shapes and hyper-parameters of the MoE transformer (ModelConfig), of its training (TrainConfig) and of the
// data it reads (DataConfig). validate() throws ferry::Error(invalid_argument) naming the offending field.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace ferry::model {

struct ModelConfig {
  int vocab = 256;       // byte tokens
  int seq = 64;          // T: positions per sequence; a batch row carries T + 2 tokens (inputs, targets, MTP)
  int layers = 2;        // transformer blocks of the main model
  int n_dense = 1;       // the first n_dense blocks use the dense SwiGLU FFN, the others the MoE FFN
  int dim = 64;          // C: model width
  int heads = 4;         // attention heads; dim % heads == 0
  int ffn_hidden = 128;  // hidden width of the dense SwiGLU FFN
  int experts = 8;       // E: routed experts per MoE layer
  int topk = 2;          // K: routed experts per token
  int groups = 4;        // G: expert groups ("nodes" in expert parallelism); experts % groups == 0
  int max_groups = 2;    // M: groups one token may reach (DeepSeek-V3's node limit)
  int expert_hidden = 32;       // hidden width of each routed expert and of the one shared expert
  double route_scale = 1.0;     // routing weights are normalised to sum to 1, then multiplied by this
  double balance_alpha = 1e-4;  // α of the sequence-wise balance loss (DeepSeek-V3 uses 1e-4); 0 turns it off
  bool mtp = true;              // multi-token prediction module of depth 1
  double mtp_lambda = 0.3;      // weight λ of the MTP loss
  double norm_eps = 1e-5;       // RMSNorm epsilon
  double init_std = 0.02;       // normal init of weight matrices (output projections get / sqrt(2 · blocks))
  std::uint64_t init_seed = 1234;

  void validate() const;
  int head_dim() const { return dim / heads; }
  // The MTP block is an MoE block when the main model has any (as in DeepSeek-V3), else dense.
  bool mtp_block_is_moe() const { return layers > n_dense; }
  // MoE layers in the whole model, the MTP block's included.
  int moe_layer_count() const { return (layers - n_dense) + ((mtp && mtp_block_is_moe()) ? 1 : 0); }
};

struct TrainConfig {
  int batch = 8;                   // B: sequences per step
  std::int64_t steps = 200;        // length of the run; the cosine schedule ends here
  double lr = 3e-3;                // peak learning rate
  double min_lr_ratio = 0.1;       // the cosine decays to lr · min_lr_ratio
  std::int64_t warmup_steps = 10;  // linear warm-up from lr / warmup_steps to lr
  double weight_decay = 0.1;       // AdamW decoupled decay; only on matrices (not norms)
  double beta1 = 0.9;
  double beta2 = 0.95;
  double adam_eps = 1e-8;
  double grad_clip = 1.0;   // global-norm clipping threshold; 0 turns clipping off
  double ema_decay = 0.99;  // EMA of parameters kept on the side
  // γ of auxiliary-loss-free balancing; 0 turns the bias updates off. DeepSeek-V3 uses 0.001 over ~10^5
  // steps; runs of a few hundred steps need the bias to catch up within tens of steps, hence 0.01.
  double bias_update_rate = 0.01;
  std::uint64_t data_seed = 42;  // order of the batches
  // Recompute every RMSNorm's output in backward instead of keeping it (DeepSeek-V3's memory saving):
  // fewer activation bytes, bit-identical gradients.
  bool recompute_norms = false;

  void validate() const;
};

// The most bytes a data file may hold: the corpus is kept in memory whole, and a CPU trainer at thousands of
// tokens per second takes hours to see 256 MiB once. A larger file (or a device like /dev/zero) is refused.
inline constexpr std::uint64_t kMaxDataFileBytes = std::uint64_t{256} << 20;

struct DataConfig {
  std::string path;  // a text file read as bytes; empty = the synthetic corpus
  std::uint64_t max_file_bytes = kMaxDataFileBytes;
  std::uint64_t synthetic_seed = 7;  // the synthetic corpus is a pure function of seed and size
  std::size_t synthetic_bytes = 1 << 20;

  void validate() const;
};

}  // namespace ferry::model
