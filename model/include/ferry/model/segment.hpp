// A contiguous run of the model with one batch's pass through it: the embedding in front when the run starts
// the model, blocks, and the OutputHead behind when it ends the model. Model runs one segment over all of
// itself; a pipeline stage runs one per micro-batch in flight, over block replicas (pipeline/stage.hpp).
// Parameters are read from, and gradients accumulated into, the ParamStore passed in.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <vector>

#include "ferry/model/block.hpp"
#include "ferry/model/config.hpp"
#include "ferry/model/output_head.hpp"
#include "ferry/model/params.hpp"
#include "ferry/model/tokens.hpp"

namespace ferry::model {

// The model's token and position embeddings.
struct EmbeddingParams {
  ParamRef wte, wpe;
};

template <typename T>
class Segment {
 public:
  // embedding: set when the run starts the model; head: set when it ends the model. The blocks and the head
  // must outlive the segment.
  Segment(const ModelConfig& config, std::optional<EmbeddingParams> embedding, std::vector<Block<T>*> blocks,
          OutputHead<T>* head);

  // tokens: the batch [rows, seq + 2] (read when the run embeds or ends in the head); in: the previous run's
  // output (ignored when the run embeds). Returns this run's output (valid until the next forward), or null
  // when it ends in the head, whose loss is then in losses().
  const T* forward(ParamStore<T>& store, const std::uint8_t* tokens, int rows, const T* in);
  // dout: ∂L/∂(this run's output), ignored when it ends in the head (that starts from its loss with seed 1).
  // Returns ∂L/∂input (valid until the next backward), or null when the run embeds.
  const T* backward(ParamStore<T>& store, const T* dout);

  // main and mtp from the head; balance: this run's MoE layers (the MTP block's included); total = main +
  // mtp_lambda · mtp + balance. Each a mean over the batch's positions.
  const LossParts& losses() const { return losses_; }
  int rows() const { return rows_; }
  std::size_t activation_size() const;  // values of one input or output: rows · seq · dim

  // Activation bytes of the last forward and backward (activations.hpp): everything kept from forward for
  // backward (the block inputs, the tokens, every layer's state), plus the largest output that backward
  // recomputed and held at once.
  std::size_t peak_activation_bytes() const { return kept_bytes_ + recompute_bytes_; }

 private:
  int seq_, dim_, vocab_;
  std::optional<EmbeddingParams> embedding_;
  std::vector<Block<T>*> blocks_;
  OutputHead<T>* head_;
  LossParts losses_;

  int rows_ = 0;
  TokenRows tokens_;
  std::vector<std::vector<T>> xs_;  // xs_[i] = input of block i, xs_[blocks] = the run's output
  std::vector<T> dcurrent_, dnext_;
  std::size_t kept_bytes_ = 0, recompute_bytes_ = 0;
};

}  // namespace ferry::model
