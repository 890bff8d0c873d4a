// Byte embedding: out[b, t] = wte[token[b, t]] + wpe[t] (wpe optional).
//
// Backward functions in this directory ACCUMULATE (+=) into every gradient they produce, parameters and
// inputs alike, so residual branches and shared weights (the MTP reuses wte) need no extra buffers.
#pragma once

namespace ferry::model {

// tokens [B*T] in [0, vocab); wte [vocab, C]; wpe [T, C] or nullptr; out [B*T, C].
template <typename T>
void embedding_forward(T* out, const int* tokens, const T* wte, const T* wpe, int batch, int seq, int dim);

// dwte += scatter of dout by token; dwpe += dout summed over the batch (skipped when dwpe is nullptr).
template <typename T>
void embedding_backward(T* dwte, T* dwpe, const T* dout, const int* tokens, int batch, int seq, int dim);

}  // namespace ferry::model
