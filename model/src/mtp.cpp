#include "ferry/model/mtp.hpp"

#include <algorithm>
#include <cstddef>

#include "ferry/model/activations.hpp"
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
      block_(std::make_unique<Block<T>>(config, store, "mtp.block", config.mtp_block_is_moe(),
                                        std::move(exchange))) {}

template <typename T>
MtpModule<T>::MtpModule(const MtpModule& other, std::unique_ptr<ExpertExchange<T>> exchange)
    : dim_(other.dim_),
      seq_(other.seq_),
      eps_(other.eps_),
      recompute_(other.recompute_),
      norm_h_(other.norm_h_),
      norm_e_(other.norm_e_),
      proj_(other.proj_),
      norm_f_(other.norm_f_),
      block_(other.block_->replica(std::move(exchange))) {}

template <typename T>
std::unique_ptr<MtpModule<T>> MtpModule<T>::replica(std::unique_ptr<ExpertExchange<T>> exchange) const {
  return std::unique_ptr<MtpModule>(new MtpModule(*this, std::move(exchange)));
}

template <typename T>
void MtpModule<T>::set_recompute_norms(bool on) {
  recompute_ = on;
  block_->set_recompute_norms(on);
}

template <typename T>
void MtpModule<T>::normalised_inputs(T* cat, const T* h, ParamStore<T>& store) {
  const int n = batch_ * seq_, C = dim_;
  h_rstd_.resize(n);
  emb_rstd_.resize(n);
  // Row by row into the two halves of each concatenated row (RMSNorm is per row: the same values as
  // normalising all rows at once).
  for (int i = 0; i < n; ++i) {
    T* row = cat + static_cast<std::size_t>(i) * 2 * C;
    const std::size_t at = static_cast<std::size_t>(i) * C;
    rmsnorm_forward(row, &h_rstd_[i], h + at, store.value(norm_h_), 1, C, eps_);
    rmsnorm_forward(row + C, &emb_rstd_[i], emb_.data() + at, store.value(norm_e_), 1, C, eps_);
  }
}

template <typename T>
T MtpModule<T>::forward(T* out, const T* h, const int* next_tokens, const T* wte, int batch,
                        ParamStore<T>& store) {
  batch_ = batch;
  const int n = batch * seq_, C = dim_;
  const std::size_t size = static_cast<std::size_t>(n) * C;
  next_tokens_.assign(next_tokens, next_tokens + n);
  emb_.resize(size);
  cat_.resize(2 * size);
  c0_.resize(size);
  c1_.resize(size);
  f_rstd_.resize(n);

  embedding_forward<T>(emb_.data(), next_tokens_.data(), wte, nullptr, batch, seq_, C);
  normalised_inputs(cat_.data(), h, store);
  linear_forward(c0_.data(), cat_.data(), store.value(proj_), n, 2 * C, C);
  if (recompute_) release(cat_);
  const T balance = block_->forward(c1_.data(), c0_.data(), batch, store);
  recompute_output(out, store);
  return balance;
}

template <typename T>
void MtpModule<T>::recompute_output(T* out, ParamStore<T>& store) {
  rmsnorm_forward(out, f_rstd_.data(), c1_.data(), store.value(norm_f_), batch_ * seq_, dim_, eps_);
}

template <typename T>
void MtpModule<T>::backward(T* dh, T* dwte, const T* dout, const T* h, ParamStore<T>& store) {
  const int n = batch_ * seq_, C = dim_;
  const std::size_t size = static_cast<std::size_t>(n) * C;
  dc1_.assign(size, T(0));
  rmsnorm_backward(dc1_.data(), store.grad(norm_f_), dout, c1_.data(), store.value(norm_f_), f_rstd_.data(),
                   n, C);
  dc0_.assign(size, T(0));
  block_->backward(dc0_.data(), dc1_.data(), c0_.data(), store);
  recompute_bytes_ = block_->recompute_bytes();
  const T* cat = cat_.data();
  if (recompute_) {
    recomputed_.resize(2 * size);
    normalised_inputs(recomputed_.data(), h, store);
    recompute_bytes_ = std::max(recompute_bytes_, bytes_held(recomputed_));
    cat = recomputed_.data();
  }
  dcat_.assign(2 * size, T(0));
  linear_backward(dcat_.data(), store.grad(proj_), dc0_.data(), cat, store.value(proj_), n, 2 * C, C);
  release(recomputed_);
  // ∂L/∂cat's two halves, back through each norm, row by row.
  for (int i = 0; i < n; ++i) {
    const std::size_t at = static_cast<std::size_t>(i) * C;
    rmsnorm_backward(dh + at, store.grad(norm_h_), dcat_.data() + 2 * at, h + at, store.value(norm_h_),
                     &h_rstd_[i], 1, C);
  }
  demb_.assign(size, T(0));
  for (int i = 0; i < n; ++i) {
    const std::size_t at = static_cast<std::size_t>(i) * C;
    rmsnorm_backward(demb_.data() + at, store.grad(norm_e_), dcat_.data() + 2 * at + C, emb_.data() + at,
                     store.value(norm_e_), &emb_rstd_[i], 1, C);
  }
  embedding_backward<T>(dwte, nullptr, demb_.data(), next_tokens_.data(), batch_, seq_, C);
}

template <typename T>
std::size_t MtpModule<T>::activation_bytes() const {
  return bytes_held(next_tokens_, emb_, h_rstd_, emb_rstd_, cat_, c0_, c1_, f_rstd_) +
         block_->activation_bytes();
}

template class MtpModule<float>;
template class MtpModule<double>;

}  // namespace ferry::model
