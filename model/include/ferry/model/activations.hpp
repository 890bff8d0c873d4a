// Activation memory: the forward results a layer keeps for its backward pass, in bytes.
//
// Counted: tensors the backward pass reads (a norm's input, attention probabilities, expert inputs...).
// Not counted: forward scratch that backward never reads (logits before the softmax) and backward scratch
// (gradients of activations). With RMSNorm recomputation (DeepSeek-V3 §3.2.3) a layer keeps a norm's input
// and its per-row reciprocal RMS but not its output, and recomputes the output in backward, one at a time:
// that recomputed output is the "transient" a backward adds on top of what is kept.
#pragma once

#include <cstddef>
#include <vector>

namespace ferry::model {

// Bytes of the values the given vectors hold: their size, not their capacity, so that a pass is measured by
// what it needs whatever a larger earlier pass left allocated.
template <typename... V>
std::size_t bytes_held(const V&... vectors) {
  return (std::size_t{0} + ... + (vectors.size() * sizeof(typename V::value_type)));
}

// Frees a vector's storage (clear() alone keeps it).
template <typename V>
void release(V& vector) {
  V().swap(vector);
}

}  // namespace ferry::model
