#include "ferry/model/ferry_expert_exchange.hpp"

#include <algorithm>
#include <cstddef>
#include <string>

#include "ferry/core/error.hpp"
#include "ferry/model/exchange_observer.hpp"

namespace ferry::model {

namespace {

struct FerryHandle final : ExchangeHandle {
  ferry::Handle handle;
  int tokens = 0;
  int topk = 0;
  int dim = 0;
  std::int64_t recv_rows = 0;  // rows of ferry's receive tensors (= received tokens)
  // The expert rows made from received token m: entries [entry_offsets[m], entry_offsets[m + 1]), in slot
  // order, each naming its slot k and its row of the ExpertBatch.
  std::vector<int> entry_offsets;
  std::vector<int> entry_slot;
  std::vector<int> entry_row;
};

const FerryHandle& as_ferry(const ExchangeHandle& handle) {
  const auto* ferry_handle = dynamic_cast<const FerryHandle*>(&handle);
  if (!ferry_handle) fail(Errc::invalid_argument, "FerryExpertExchange got a handle from another exchange");
  return *ferry_handle;
}

}  // namespace

ferry::Config expert_exchange_config(const ModelConfig& model, int num_nodes) {
  ferry::Config config;
  config.num_sms = 2;  // one channel: CI runs several ranks on two cores
  config.max_hidden = model.dim + model.topk;
  config.max_topk = model.topk;
  config.max_nodes = std::max(1, std::min(model.max_groups, num_nodes));
  // Rings deep enough that a micro-batch's rows stream without waiting for credit on every few rows: over
  // TCP each credit is a round trip through two proxies.
  config.rdma_ring_slots = 128;
  config.rdma_chunk = 32;
  config.nvl_ring_slots = 64;
  config.nvl_chunk = 16;
  return config;
}

FerryExpertExchange::FerryExpertExchange(std::shared_ptr<ferry::Buffer> buffer, int num_experts)
    : buffer_(std::move(buffer)), num_experts_(num_experts) {
  if (!buffer_) fail(Errc::invalid_argument, "FerryExpertExchange needs a ferry::Buffer");
  const int ranks = buffer_->num_ranks();
  if (num_experts < 1 || num_experts % ranks != 0)
    fail(Errc::invalid_argument, "FerryExpertExchange: " + std::to_string(num_experts) +
                                     " experts cannot be split evenly over " + std::to_string(ranks) +
                                     " ranks");
  num_local_ = num_experts / ranks;
  first_local_ = buffer_->rank() * num_local_;
}

std::unique_ptr<ExchangeHandle> FerryExpertExchange::dispatch(const float* x, int dim, const int* expert,
                                                              const float* weight, int tokens, int topk,
                                                              ExpertBatch<float>& received) {
  const std::size_t slots = static_cast<std::size_t>(tokens) * topk;
  topk_idx_.assign(expert, expert + slots);
  const ferry::TensorView x_view(x, {tokens, dim}, DType::fp32);
  const ferry::TensorView idx_view(topk_idx_.data(), {tokens, topk}, DType::int64);
  const ferry::TensorView weight_view(weight, {tokens, topk}, DType::fp32);
  const ferry::Layout layout = buffer_->get_layout(idx_view, num_experts_);
  auto pending = buffer_->dispatch({x_view, {}, idx_view, weight_view}, layout);
  ferry::DispatchResult& got = await_exchange(ExchangeOp::dispatch, pending);

  auto handle = std::make_unique<FerryHandle>();
  handle->handle = got.handle;
  handle->tokens = tokens;
  handle->topk = topk;
  handle->dim = dim;
  handle->recv_rows = got.handle.recv_rows();
  const auto m_count = static_cast<int>(got.num_recv_tokens);
  const auto* recv_idx = got.recv_topk_idx.data_as<const std::int64_t>();
  const auto* recv_weight = got.recv_topk_weights.data_as<const float>();
  const auto* recv_x = got.recv_x.data_as<const float>();

  std::vector<int> count(num_local_, 0);
  for (std::size_t i = 0; i < static_cast<std::size_t>(m_count) * topk; ++i) {
    const std::int64_t j = recv_idx[i];
    if (j < 0) continue;
    if (j >= num_local_)
      fail(Errc::internal, "ferry delivered local expert " + std::to_string(j) + " to rank " +
                               std::to_string(buffer_->rank()) + ", which holds " +
                               std::to_string(num_local_));
    ++count[j];
  }
  received.dim = dim;
  received.expert_offsets.assign(num_local_ + 1, 0);
  for (int j = 0; j < num_local_; ++j) received.expert_offsets[j + 1] = received.expert_offsets[j] + count[j];
  const int rows = received.expert_offsets.back();
  received.x.resize(static_cast<std::size_t>(rows) * dim);
  received.weight.resize(rows);
  handle->entry_offsets.assign(m_count + 1, 0);
  handle->entry_slot.reserve(rows);
  handle->entry_row.reserve(rows);

  // Received tokens come ordered by (source rank, source token); one cursor per expert keeps that order
  // inside each expert's rows, as the ExpertBatch contract asks.
  std::vector<int> cursor(received.expert_offsets.begin(), received.expert_offsets.end() - 1);
  for (int m = 0; m < m_count; ++m) {
    for (int k = 0; k < topk; ++k) {
      const std::size_t slot = static_cast<std::size_t>(m) * topk + k;
      if (recv_idx[slot] < 0) continue;
      const int row = cursor[recv_idx[slot]]++;
      std::copy_n(recv_x + static_cast<std::size_t>(m) * dim, dim,
                  received.x.data() + static_cast<std::size_t>(row) * dim);
      received.weight[row] = recv_weight[slot];
      handle->entry_slot.push_back(k);
      handle->entry_row.push_back(row);
    }
    handle->entry_offsets[m + 1] = static_cast<int>(handle->entry_row.size());
  }
  return handle;
}

void FerryExpertExchange::combine(const ExchangeHandle& handle, const float* rows, float* y) {
  const FerryHandle& h = as_ferry(handle);
  const std::size_t C = h.dim;
  // One row per received token: its local experts' (already weighted) outputs, summed in slot order.
  send_.assign(static_cast<std::size_t>(h.recv_rows) * C, 0.0f);
  for (std::size_t m = 0; m + 1 < h.entry_offsets.size(); ++m) {
    float* out = send_.data() + m * C;
    for (int e = h.entry_offsets[m]; e < h.entry_offsets[m + 1]; ++e) {
      const float* r = rows + static_cast<std::size_t>(h.entry_row[e]) * C;
      for (std::size_t c = 0; c < C; ++c) out[c] += r[c];
    }
  }
  const ferry::TensorView view(send_.data(), {h.recv_rows, h.dim}, DType::fp32);
  auto pending = buffer_->combine(view, h.handle);
  const ferry::Tensor& sum = await_exchange(ExchangeOp::combine, pending).out;
  const float* s = sum.data_as<const float>();
  for (std::size_t i = 0; i < static_cast<std::size_t>(h.tokens) * C; ++i) y[i] += s[i];
}

void FerryExpertExchange::combine_backward(const ExchangeHandle& handle, const float* dy, float* drows) {
  const FerryHandle& h = as_ferry(handle);
  const std::size_t C = h.dim;
  const ferry::TensorView view(dy, {h.tokens, h.dim}, DType::fp32);
  auto pending = buffer_->dispatch(view, {}, h.handle);
  ferry::DispatchResult& got = await_exchange(ExchangeOp::combine_backward, pending);
  const float* recv = got.recv_x.data_as<const float>();
  for (std::size_t m = 0; m + 1 < h.entry_offsets.size(); ++m)
    for (int e = h.entry_offsets[m]; e < h.entry_offsets[m + 1]; ++e)
      std::copy_n(recv + m * C, C, drows + static_cast<std::size_t>(h.entry_row[e]) * C);
}

void FerryExpertExchange::dispatch_backward(const ExchangeHandle& handle, const float* dx_rows,
                                            const float* dweight_rows, float* dx, float* dweight) {
  const FerryHandle& h = as_ferry(handle);
  const std::size_t C = h.dim, K = h.topk, W = C + K;
  // Row m = [Σ ∂x of its local expert rows | ∂w of slot k at column C + k, 0 for slots held elsewhere].
  send_.assign(static_cast<std::size_t>(h.recv_rows) * W, 0.0f);
  for (std::size_t m = 0; m + 1 < h.entry_offsets.size(); ++m) {
    float* out = send_.data() + m * W;
    for (int e = h.entry_offsets[m]; e < h.entry_offsets[m + 1]; ++e) {
      const int row = h.entry_row[e];
      const float* r = dx_rows + static_cast<std::size_t>(row) * C;
      for (std::size_t c = 0; c < C; ++c) out[c] += r[c];
      out[C + h.entry_slot[e]] = dweight_rows[row];
    }
  }
  const ferry::TensorView view(send_.data(), {h.recv_rows, static_cast<std::int64_t>(W)}, DType::fp32);
  auto pending = buffer_->combine(view, h.handle);
  const ferry::Tensor& sum = await_exchange(ExchangeOp::dispatch_backward, pending).out;
  const float* s = sum.data_as<const float>();
  for (std::size_t t = 0; t < static_cast<std::size_t>(h.tokens); ++t) {
    const float* row = s + t * W;
    float* dxt = dx + t * C;
    for (std::size_t c = 0; c < C; ++c) dxt[c] += row[c];
    for (std::size_t k = 0; k < K; ++k) dweight[t * K + k] += row[C + k];
  }
}

}  // namespace ferry::model
