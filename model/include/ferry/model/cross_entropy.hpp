// Softmax cross-entropy over the byte vocabulary, averaged over rows.
#pragma once

namespace ferry::model {

// logits, probs [n, V]; targets [n]. Returns mean_i -log softmax(logits_i)[target_i]; keeps probs.
template <typename T>
T cross_entropy_forward(T* probs, const T* logits, const int* targets, int n, int vocab);

// dlogits += dloss · (probs - onehot(target)) / n, the gradient of dloss · (mean loss).
template <typename T>
void cross_entropy_backward(T* dlogits, const T* probs, const int* targets, int n, int vocab, T dloss);

}  // namespace ferry::model
