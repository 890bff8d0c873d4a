// What a model of a given shape will take, known before it is built: a command checks a shape against the
// machine's memory and the trainer's int indexing before any work, instead of failing with std::bad_alloc (or
// a wrapped size) in the middle of a run. Every figure is an upper bound (tests/model/test_footprint.cpp
// holds it against built models), computed with saturating arithmetic, so absurd shapes come out huge, not
// small.
#pragma once

#include <cstdint>
#include <vector>

#include "ferry/model/config.hpp"

namespace ferry::model {

// One tensor's size, and the ModelConfig fields (or "rows") it grows with.
struct TensorSize {
  const char* what = "";
  std::uint64_t elements = 0;
  std::vector<const char*> fields;  // "ModelConfig.seq", ..., "rows"
};

struct Footprint {
  std::uint64_t parameters = 0;        // >= Model::params().size() with every expert on this rank
  std::uint64_t activation_bytes = 0;  // >= Model::peak_activation_bytes() of a step on `rows` sequences
  // The largest single tensor (a layer's activations, the attention scores, all parameters): the CPU
  // kernels index with int, so it must stay below kMaxTensorElements.
  TensorSize largest;
};

// `rows`: the sequences one forward and backward holds at once (a rank's batch; a pipelined rank may hold
// the whole global batch).
Footprint estimate_footprint(const ModelConfig& config, std::uint64_t rows);

// The largest tensor the CPU trainer can index: 2^31 - 1 elements.
inline constexpr std::uint64_t kMaxTensorElements = (std::uint64_t{1} << 31) - 1;

}  // namespace ferry::model
