#include "ferry/model/mtp.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "ferry/model/embedding.hpp"
#include "ferry/model/linear.hpp"
#include "ferry/model/rmsnorm.hpp"

namespace ferry::model {

namespace {

// Members are constructed in declaration order: the norms and the projection register before the block.
template <typename T>
ParamRef add_norm(ParamStore<T>& store, const char* name, int dim) {
  return store.add(name, {dim}, ParamInit::ones);
}

}  // namespace

template <typename T>
MtpModule<T>::MtpModule(const ModelConfig& config, ParamStore<T>& store,
                        std::unique_ptr<ExpertExchange<T>> exchange)
    : dim_(config.dim),
      seq_(config.seq),
      eps_(config.norm_eps),
      norm_h_(add_norm(store, "mtp.norm_h", config.dim)),
      norm_e_(add_norm(store, "mtp.norm_e", config.dim)),
      proj_(store.add("mtp.proj", {2 * config.dim, config.dim}, ParamInit::normal, config.init_std)),
      norm_f_(add_norm(store, "mtp.norm_f", config.dim)),
      block_(config, store, "mtp.block", config.mtp_block_is_moe(), std::move(exchange)) {}

template <typename T>
T MtpModule<T>::forward(T* out, const T* h, const int* next_tokens, const T* wte, int batch,
                        ParamStore<T>& store) {
  batch_ = batch;
  const int n = batch * seq_, C = dim_;
  const std::size_t size = static_cast<std::size_t>(n) * C;
  next_tokens_.assign(next_tokens, next_tokens + n);
  h_.assign(h, h + size);
  emb_.resize(size);
  h_norm_.resize(size);
  h_rstd_.resize(n);
  emb_norm_.resize(size);
  emb_rstd_.resize(n);
  cat_.resize(2 * size);
  c0_.resize(size);
  c1_.resize(size);
  f_rstd_.resize(n);

  embedding_forward<T>(emb_.data(), next_tokens_.data(), wte, nullptr, batch, seq_, C);
  rmsnorm_forward(h_norm_.data(), h_rstd_.data(), h_.data(), store.value(norm_h_), n, C, eps_);
  rmsnorm_forward(emb_norm_.data(), emb_rstd_.data(), emb_.data(), store.value(norm_e_), n, C, eps_);
  for (int i = 0; i < n; ++i) {
    T* row = cat_.data() + static_cast<std::size_t>(i) * 2 * C;
    std::copy_n(h_norm_.data() + static_cast<std::size_t>(i) * C, C, row);
    std::copy_n(emb_norm_.data() + static_cast<std::size_t>(i) * C, C, row + C);
  }
  linear_forward(c0_.data(), cat_.data(), store.value(proj_), n, 2 * C, C);
  const T balance = block_.forward(c1_.data(), c0_.data(), batch, store);
  rmsnorm_forward(out, f_rstd_.data(), c1_.data(), store.value(norm_f_), n, C, eps_);
  return balance;
}

template <typename T>
void MtpModule<T>::backward(T* dh, T* dwte, const T* dout, ParamStore<T>& store) {
  const int n = batch_ * seq_, C = dim_;
  const std::size_t size = static_cast<std::size_t>(n) * C;
  dc1_.assign(size, T(0));
  rmsnorm_backward(dc1_.data(), store.grad(norm_f_), dout, c1_.data(), store.value(norm_f_), f_rstd_.data(),
                   n, C);
  dc0_.assign(size, T(0));
  block_.backward(dc0_.data(), dc1_.data(), store);
  dcat_.assign(2 * size, T(0));
  linear_backward(dcat_.data(), store.grad(proj_), dc0_.data(), cat_.data(), store.value(proj_), n, 2 * C, C);
  // Split ∂L/∂cat into its halves, then back through each norm.
  dpart_.resize(size);
  for (int i = 0; i < n; ++i)
    std::copy_n(dcat_.data() + static_cast<std::size_t>(i) * 2 * C, C,
                dpart_.data() + static_cast<std::size_t>(i) * C);
  rmsnorm_backward(dh, store.grad(norm_h_), dpart_.data(), h_.data(), store.value(norm_h_), h_rstd_.data(), n,
                   C);
  for (int i = 0; i < n; ++i)
    std::copy_n(dcat_.data() + static_cast<std::size_t>(i) * 2 * C + C, C,
                dpart_.data() + static_cast<std::size_t>(i) * C);
  demb_.assign(size, T(0));
  rmsnorm_backward(demb_.data(), store.grad(norm_e_), dpart_.data(), emb_.data(), store.value(norm_e_),
                   emb_rstd_.data(), n, C);
  embedding_backward<T>(dwte, nullptr, demb_.data(), next_tokens_.data(), batch_, seq_, C);
}

template class MtpModule<float>;
template class MtpModule<double>;

}  // namespace ferry::model
