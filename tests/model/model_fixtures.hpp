// Small models and batches the model's in-process tests share.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "ferry/model/config.hpp"
#include "ferry/model/expert_exchange.hpp"
#include "ferry/model/model.hpp"
#include "ferry/model/rng.hpp"

namespace ferry::model::testing {

// Four blocks (one dense, three MoE) of width 16: cut into 2 or 4 pipeline stages, every stage has a block.
inline ModelConfig four_block_model(bool mtp) {
  ModelConfig c;
  c.layers = 4;
  c.n_dense = 1;
  c.dim = 16;
  c.heads = 2;
  c.seq = 8;
  c.ffn_hidden = 32;
  c.experts = 4;
  c.topk = 2;
  c.groups = 2;
  c.max_groups = 2;
  c.expert_hidden = 16;
  c.mtp = mtp;
  c.init_seed = 3;
  return c;
}

// rows × (seq + 2) uniform tokens of the vocabulary.
inline std::vector<std::uint8_t> random_tokens(const ModelConfig& c, int rows, std::uint64_t seed) {
  Rng rng(seed);
  std::vector<std::uint8_t> tokens(static_cast<std::size_t>(rows) * (c.seq + 2));
  for (auto& t : tokens) t = static_cast<std::uint8_t>(rng.below(c.vocab));
  return tokens;
}

// Every MoE layer with all of its experts in this process.
inline ExchangeFactory<float> local_exchanges() {
  return [](int, int experts) { return std::make_unique<LocalExpertExchange<float>>(experts); };
}

}  // namespace ferry::model::testing
