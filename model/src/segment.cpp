#include "ferry/model/segment.hpp"

#include <algorithm>
#include <string>
#include <utility>

#include "ferry/core/error.hpp"
#include "ferry/model/activations.hpp"
#include "ferry/model/embedding.hpp"

namespace ferry::model {

template <typename T>
Segment<T>::Segment(const ModelConfig& config, std::optional<EmbeddingParams> embedding,
                    std::vector<Block<T>*> blocks, OutputHead<T>* head)
    : seq_(config.seq),
      dim_(config.dim),
      vocab_(config.vocab),
      embedding_(embedding),
      blocks_(std::move(blocks)),
      head_(head) {}

template <typename T>
std::size_t Segment<T>::activation_size() const {
  return static_cast<std::size_t>(rows_) * seq_ * dim_;
}

template <typename T>
const T* Segment<T>::forward(ParamStore<T>& store, const std::uint8_t* tokens, int rows, const T* in) {
  if (rows < 1) fail(Errc::invalid_argument, "a batch needs at least one row, got " + std::to_string(rows));
  rows_ = rows;
  const std::size_t size = activation_size();
  const int blocks = static_cast<int>(blocks_.size());
  if (embedding_ || head_) tokens_.read(tokens, rows, seq_, vocab_);
  xs_.resize(blocks + 1);
  for (auto& x : xs_) x.resize(size);

  if (embedding_) {
    embedding_forward(xs_[0].data(), tokens_.inputs.data(), store.value(embedding_->wte),
                      store.value(embedding_->wpe), rows, seq_, dim_);
  } else {
    std::copy_n(in, size, xs_[0].data());
  }
  T balance = 0;
  for (int i = 0; i < blocks; ++i)
    balance += blocks_[i]->forward(xs_[i + 1].data(), xs_[i].data(), rows, store);
  LossParts head_losses;
  if (head_) head_losses = head_->forward(xs_[blocks].data(), tokens_, store);
  balance += static_cast<T>(head_losses.balance);
  const T main = static_cast<T>(head_losses.main), mtp = static_cast<T>(head_losses.mtp);
  const T lambda = static_cast<T>(head_ ? head_->mtp_lambda() : 0.0);
  const T total = main + lambda * mtp + balance;
  losses_ = LossParts{static_cast<double>(total), static_cast<double>(main), static_cast<double>(mtp),
                      static_cast<double>(balance)};

  kept_bytes_ = tokens_.bytes() + (head_ ? head_->activation_bytes() : 0);
  for (const auto& x : xs_) kept_bytes_ += bytes_held(x);
  for (const Block<T>* block : blocks_) kept_bytes_ += block->activation_bytes();
  recompute_bytes_ = 0;
  return head_ ? nullptr : xs_[blocks].data();
}

template <typename T>
const T* Segment<T>::backward(ParamStore<T>& store, const T* dout) {
  if (rows_ == 0) fail(Errc::internal, "backward() without a forward()");
  const std::size_t size = activation_size();
  const int blocks = static_cast<int>(blocks_.size());
  if (head_) {
    dcurrent_.assign(size, T(0));
    head_->backward(dcurrent_.data(), xs_[blocks].data(), tokens_, store);
    recompute_bytes_ = head_->recompute_bytes();
  } else {
    dcurrent_.assign(dout, dout + size);
    recompute_bytes_ = 0;
  }
  for (int i = blocks - 1; i >= 0; --i) {
    dnext_.assign(size, T(0));
    blocks_[i]->backward(dnext_.data(), dcurrent_.data(), xs_[i].data(), store);
    recompute_bytes_ = std::max(recompute_bytes_, blocks_[i]->recompute_bytes());
    std::swap(dcurrent_, dnext_);
  }
  if (!embedding_) return dcurrent_.data();
  embedding_backward(store.grad(embedding_->wte), store.grad(embedding_->wpe), dcurrent_.data(),
                     tokens_.inputs.data(), rows_, seq_, dim_);
  return nullptr;
}

template class Segment<float>;
template class Segment<double>;

}  // namespace ferry::model
