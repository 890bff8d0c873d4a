#include "ferry/model/block.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>

#include "ferry/model/activations.hpp"
#include "ferry/model/rmsnorm.hpp"

namespace ferry::model {

template <typename T>
Block<T>::Block(const ModelConfig& config, ParamStore<T>& store, const std::string& prefix, bool moe,
                std::unique_ptr<ExpertExchange<T>> exchange)
    : dim_(config.dim),
      heads_(config.heads),
      seq_(config.seq),
      ffn_hidden_(config.ffn_hidden),
      eps_(config.norm_eps) {
  const int C = config.dim;
  const double std = config.init_std;
  // GPT-2's scaling: each residual branch's output projection shrinks with the number of branches.
  const int blocks = config.layers + (config.mtp ? 1 : 0);
  const double proj_std = config.init_std / std::sqrt(2.0 * blocks);
  ln1_ = store.add(prefix + ".ln1", {C}, ParamInit::ones);
  wqkv_ = store.add(prefix + ".attn.wqkv", {C, 3 * C}, ParamInit::normal, std);
  wo_ = store.add(prefix + ".attn.wo", {C, C}, ParamInit::normal, proj_std);
  ln2_ = store.add(prefix + ".ln2", {C}, ParamInit::ones);
  if (!moe) {
    w13_ = store.add(prefix + ".ffn.w13", {C, 2 * config.ffn_hidden}, ParamInit::normal, std);
    w2_ = store.add(prefix + ".ffn.w2", {config.ffn_hidden, C}, ParamInit::normal, proj_std);
    return;
  }
  const int E = config.experts, H = config.expert_hidden;
  gate_ = store.add(prefix + ".moe.gate", {C, E}, ParamInit::normal, std);
  shared_w13_ = store.add(prefix + ".moe.shared.w13", {C, 2 * H}, ParamInit::normal, std);
  shared_w2_ = store.add(prefix + ".moe.shared.w2", {H, C}, ParamInit::normal, proj_std);
  experts_w13_ = store.add(prefix + ".moe.experts.w13", {E, C, 2 * H}, ParamInit::normal, std);
  experts_w2_ = store.add(prefix + ".moe.experts.w2", {E, H, C}, ParamInit::normal, proj_std);
  MoEShape shape;
  shape.dim = C;
  shape.hidden = H;
  shape.router = RouterShape{E, config.topk, config.groups, config.max_groups, config.route_scale};
  shape.balance_alpha = config.balance_alpha;
  moe_ = std::make_unique<MoELayer<T>>(shape, std::move(exchange));
}

template <typename T>
Block<T>::Block(const Block& other, std::unique_ptr<ExpertExchange<T>> exchange)
    : dim_(other.dim_),
      heads_(other.heads_),
      seq_(other.seq_),
      ffn_hidden_(other.ffn_hidden_),
      eps_(other.eps_),
      recompute_(other.recompute_),
      ln1_(other.ln1_),
      wqkv_(other.wqkv_),
      wo_(other.wo_),
      ln2_(other.ln2_),
      w13_(other.w13_),
      w2_(other.w2_),
      gate_(other.gate_),
      shared_w13_(other.shared_w13_),
      shared_w2_(other.shared_w2_),
      experts_w13_(other.experts_w13_),
      experts_w2_(other.experts_w2_) {
  if (!other.moe_) return;
  moe_ = std::make_unique<MoELayer<T>>(other.moe_->shape(), std::move(exchange));
  moe_->bias() = other.moe_->bias();
}

template <typename T>
std::unique_ptr<Block<T>> Block<T>::replica(std::unique_ptr<ExpertExchange<T>> exchange) const {
  return std::unique_ptr<Block>(new Block(*this, std::move(exchange)));
}

template <typename T>
MoEWeights<T> Block<T>::moe_weights(ParamStore<T>& store) const {
  return MoEWeights<T>{store.value(gate_), store.value(shared_w13_), store.value(shared_w2_),
                       store.value(experts_w13_), store.value(experts_w2_)};
}

template <typename T>
MoEGrads<T> Block<T>::moe_grads(ParamStore<T>& store) const {
  return MoEGrads<T>{store.grad(gate_), store.grad(shared_w13_), store.grad(shared_w2_),
                     store.grad(experts_w13_), store.grad(experts_w2_)};
}

template <typename T>
void Block<T>::norm1(T* out, const T* in, int n, ParamStore<T>& store) {
  ln1_rstd_.resize(n);
  rmsnorm_forward(out, ln1_rstd_.data(), in, store.value(ln1_), n, dim_, eps_);
}

template <typename T>
void Block<T>::norm2(T* out, int n, ParamStore<T>& store) {
  ln2_rstd_.resize(n);
  rmsnorm_forward(out, ln2_rstd_.data(), mid_.data(), store.value(ln2_), n, dim_, eps_);
}

template <typename T>
T Block<T>::forward(T* out, const T* in, int batch, ParamStore<T>& store) {
  batch_ = batch;
  const int n = batch * seq_, C = dim_;
  const std::size_t size = static_cast<std::size_t>(n) * C;
  ln1_out_.resize(size);
  mid_.resize(size);
  ln2_out_.resize(size);

  norm1(ln1_out_.data(), in, n, store);
  attention_forward(mid_.data(), attn_acts_, ln1_out_.data(), store.value(wqkv_), store.value(wo_), batch,
                    seq_, C, heads_);
  for (std::size_t i = 0; i < size; ++i) mid_[i] += in[i];
  if (recompute_) release(ln1_out_);
  norm2(ln2_out_.data(), n, store);
  T balance = 0;
  if (moe_) {
    balance = moe_->forward(out, ln2_out_.data(), batch, seq_, moe_weights(store));
  } else {
    swiglu_forward(out, ffn_acts_, ln2_out_.data(), store.value(w13_), store.value(w2_), n, C, ffn_hidden_);
  }
  if (recompute_) release(ln2_out_);
  for (std::size_t i = 0; i < size; ++i) out[i] += mid_[i];
  return balance;
}

template <typename T>
void Block<T>::backward(T* din, const T* dout, const T* in, ParamStore<T>& store) {
  const int n = batch_ * seq_, C = dim_;
  const std::size_t size = static_cast<std::size_t>(n) * C;
  // Recomputation writes each norm's output where forward would have kept it, one norm at a time.
  recompute_bytes_ = 0;
  const auto norm_output = [&](std::vector<T>& kept, auto recompute) -> const T* {
    if (!recompute_) return kept.data();
    recomputed_.resize(size);
    recompute(recomputed_.data());
    recompute_bytes_ = bytes_held(recomputed_);
    return recomputed_.data();
  };
  // out = mid + ffn(ln2(mid)): the residual passes dout straight to mid.
  dmid_.assign(dout, dout + size);
  dln2_.assign(size, T(0));
  const T* ln2_out = norm_output(ln2_out_, [&](T* y) { norm2(y, n, store); });
  if (moe_) {
    moe_->backward(dln2_.data(), moe_grads(store), dout, ln2_out, moe_weights(store));
  } else {
    swiglu_backward(dln2_.data(), store.grad(w13_), store.grad(w2_), dout, ffn_acts_, ln2_out,
                    store.value(w13_), store.value(w2_), n, C, ffn_hidden_);
  }
  rmsnorm_backward(dmid_.data(), store.grad(ln2_), dln2_.data(), mid_.data(), store.value(ln2_),
                   ln2_rstd_.data(), n, C);
  // mid = in + attn(ln1(in)).
  for (std::size_t i = 0; i < size; ++i) din[i] += dmid_[i];
  dln1_.assign(size, T(0));
  const T* ln1_out = norm_output(ln1_out_, [&](T* y) { norm1(y, in, n, store); });
  attention_backward(dln1_.data(), store.grad(wqkv_), store.grad(wo_), dmid_.data(), attn_acts_, ln1_out,
                     store.value(wqkv_), store.value(wo_), batch_, seq_, C, heads_);
  rmsnorm_backward(din, store.grad(ln1_), dln1_.data(), in, store.value(ln1_), ln1_rstd_.data(), n, C);
  release(recomputed_);
}

template <typename T>
std::size_t Block<T>::activation_bytes() const {
  std::size_t bytes = bytes_held(ln1_out_, ln1_rstd_, mid_, ln2_out_, ln2_rstd_, attn_acts_.qkv,
                                 attn_acts_.att, attn_acts_.ctx);
  if (moe_) return bytes + moe_->activation_bytes();
  return bytes + bytes_held(ffn_acts_.h, ffn_acts_.a);
}

template class Block<float>;
template class Block<double>;

}  // namespace ferry::model
