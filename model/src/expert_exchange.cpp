#include "ferry/model/expert_exchange.hpp"

#include <algorithm>
#include <cstddef>
#include <string>

#include "ferry/core/error.hpp"

namespace ferry::model {

namespace {

struct LocalHandle final : ExchangeHandle {
  int tokens = 0;
  int topk = 0;
  int dim = 0;
  std::vector<int> row_of_slot;   // [tokens * topk]: received row of (token, k), -1 when the slot is empty
  std::vector<int> token_of_row;  // [rows]
};

const LocalHandle& as_local(const ExchangeHandle& handle) {
  const auto* local = dynamic_cast<const LocalHandle*>(&handle);
  if (!local) fail(Errc::invalid_argument, "LocalExpertExchange got a handle from another exchange");
  return *local;
}

}  // namespace

template <typename T>
LocalExpertExchange<T>::LocalExpertExchange(int num_experts) : num_experts_(num_experts) {
  if (num_experts < 1) fail(Errc::invalid_argument, "LocalExpertExchange: num_experts must be >= 1");
}

template <typename T>
std::unique_ptr<ExchangeHandle> LocalExpertExchange<T>::dispatch(const T* x, int dim, const int* expert,
                                                                 const T* weight, int tokens, int topk,
                                                                 ExpertBatch<T>& received) {
  auto handle = std::make_unique<LocalHandle>();
  handle->tokens = tokens;
  handle->topk = topk;
  handle->dim = dim;
  const std::size_t slots = static_cast<std::size_t>(tokens) * topk;

  std::vector<int> count(num_experts_, 0);
  for (std::size_t i = 0; i < slots; ++i) {
    const int e = expert[i];
    if (e == -1) continue;
    if (e < 0 || e >= num_experts_)
      fail(Errc::invalid_argument, "dispatch: token " + std::to_string(i / topk) + " names expert " +
                                       std::to_string(e) + ", outside [0, " + std::to_string(num_experts_) +
                                       ")");
    ++count[e];
  }
  received.dim = dim;
  received.expert_offsets.assign(num_experts_ + 1, 0);
  for (int e = 0; e < num_experts_; ++e)
    received.expert_offsets[e + 1] = received.expert_offsets[e] + count[e];
  const int rows = received.expert_offsets.back();
  received.x.resize(static_cast<std::size_t>(rows) * dim);
  received.weight.resize(rows);
  handle->row_of_slot.assign(slots, -1);
  handle->token_of_row.resize(rows);

  // Token-major scan with one cursor per expert: rows of each expert end up in token order.
  std::vector<int> cursor(received.expert_offsets.begin(), received.expert_offsets.end() - 1);
  for (int t = 0; t < tokens; ++t) {
    for (int k = 0; k < topk; ++k) {
      const std::size_t slot = static_cast<std::size_t>(t) * topk + k;
      const int e = expert[slot];
      if (e == -1) continue;
      const int row = cursor[e]++;
      handle->row_of_slot[slot] = row;
      handle->token_of_row[row] = t;
      std::copy_n(x + static_cast<std::size_t>(t) * dim, dim,
                  received.x.data() + static_cast<std::size_t>(row) * dim);
      received.weight[row] = weight[slot];
    }
  }
  return handle;
}

template <typename T>
void LocalExpertExchange<T>::combine(const ExchangeHandle& handle, const T* rows, T* y) {
  const LocalHandle& h = as_local(handle);
  for (int t = 0; t < h.tokens; ++t) {
    T* yt = y + static_cast<std::size_t>(t) * h.dim;
    for (int k = 0; k < h.topk; ++k) {  // fixed order: the token's k slots in routing order
      const int row = h.row_of_slot[static_cast<std::size_t>(t) * h.topk + k];
      if (row < 0) continue;
      const T* r = rows + static_cast<std::size_t>(row) * h.dim;
      for (int c = 0; c < h.dim; ++c) yt[c] += r[c];
    }
  }
}

template <typename T>
void LocalExpertExchange<T>::combine_backward(const ExchangeHandle& handle, const T* dy, T* drows) {
  const LocalHandle& h = as_local(handle);
  for (std::size_t row = 0; row < h.token_of_row.size(); ++row)
    std::copy_n(dy + static_cast<std::size_t>(h.token_of_row[row]) * h.dim, h.dim, drows + row * h.dim);
}

template <typename T>
void LocalExpertExchange<T>::dispatch_backward(const ExchangeHandle& handle, const T* dx_rows,
                                               const T* dweight_rows, T* dx, T* dweight) {
  const LocalHandle& h = as_local(handle);
  for (int t = 0; t < h.tokens; ++t) {
    T* dxt = dx + static_cast<std::size_t>(t) * h.dim;
    for (int k = 0; k < h.topk; ++k) {
      const std::size_t slot = static_cast<std::size_t>(t) * h.topk + k;
      const int row = h.row_of_slot[slot];
      if (row < 0) continue;
      const T* r = dx_rows + static_cast<std::size_t>(row) * h.dim;
      for (int c = 0; c < h.dim; ++c) dxt[c] += r[c];
      dweight[slot] += dweight_rows[row];
    }
  }
}

template class LocalExpertExchange<float>;
template class LocalExpertExchange<double>;

}  // namespace ferry::model
