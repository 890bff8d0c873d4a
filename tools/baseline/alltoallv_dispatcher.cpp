// Megatron-style AlltoAll dispatcher over MPI: see alltoallv_dispatcher.hpp.
#include "baseline/alltoallv_dispatcher.hpp"

#include <cstring>
#include <stdexcept>
#include <string>

namespace ferry::baseline {
namespace {

void check_mpi(int code, const char* what) {
  if (code == MPI_SUCCESS) return;
  char text[MPI_MAX_ERROR_STRING];
  int length = 0;
  MPI_Error_string(code, text, &length);
  throw std::runtime_error(std::string(what) + " failed: " + std::string(text, length));
}

float bf16_to_float(std::uint16_t bits) {
  std::uint32_t wide = std::uint32_t{bits} << 16;
  float value = 0;
  std::memcpy(&value, &wide, sizeof(value));
  return value;
}

std::uint16_t float_to_bf16(float value) {  // round to nearest even; the sums here are finite
  std::uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof(bits));
  return static_cast<std::uint16_t>((bits + 0x7fffu + ((bits >> 16) & 1u)) >> 16);
}

}  // namespace

AlltoallvDispatcher::AlltoallvDispatcher(MPI_Comm comm, const std::vector<std::int64_t>& topk_idx,
                                         std::int64_t num_tokens, int topk, std::int64_t num_experts)
    : comm_(comm), topk_idx_(topk_idx), num_tokens_(num_tokens), topk_(topk), num_experts_(num_experts) {
  check_mpi(MPI_Comm_size(comm, &num_ranks_), "MPI_Comm_size");
  if (num_experts_ % num_ranks_ != 0) {
    throw std::invalid_argument("alltoallv: experts (" + std::to_string(num_experts_) +
                                ") must be a multiple of the ranks (" + std::to_string(num_ranks_) + ")");
  }
  send_counts_.assign(num_ranks_, 0);
  recv_counts_.assign(num_ranks_, 0);
  send_displs_.assign(num_ranks_, 0);
  recv_displs_.assign(num_ranks_, 0);
}

AlltoallvDispatcher::~AlltoallvDispatcher() = default;

// Megatron's permute: a stable counting sort of the (token, slot) copies by expert, so copies for one rank
// are contiguous and ordered by (expert, token). Recomputed on every dispatch, as a training step would.
void AlltoallvDispatcher::sort_by_expert() {
  std::vector<std::int64_t> start(num_experts_ + 1, 0);
  for (std::int64_t e : topk_idx_) {
    if (e >= 0) ++start[e + 1];
  }
  for (std::int64_t e = 0; e < num_experts_; ++e) start[e + 1] += start[e];
  order_.assign(start[num_experts_], 0);
  for (std::int64_t t = 0; t < num_tokens_; ++t) {
    for (int k = 0; k < topk_; ++k) {
      const std::int64_t e = topk_idx_[t * topk_ + k];
      if (e >= 0) order_[start[e]++] = t;
    }
  }
  // start[e] now ends expert e; the copies for rank r end where its last expert ends.
  const std::int64_t per_rank = num_experts_ / num_ranks_;
  std::int64_t begin = 0;
  for (int r = 0; r < num_ranks_; ++r) {
    const std::int64_t end = start[(r + 1) * per_rank - 1];
    send_counts_[r] = static_cast<int>(end - begin);
    send_displs_[r] = static_cast<int>(begin);
    begin = end;
  }
}

void AlltoallvDispatcher::exchange(const void* send, std::size_t row_bytes, void* recv, bool forward) {
  MPI_Datatype row;
  check_mpi(MPI_Type_contiguous(static_cast<int>(row_bytes), MPI_BYTE, &row), "MPI_Type_contiguous");
  check_mpi(MPI_Type_commit(&row), "MPI_Type_commit");
  const int code = forward ? MPI_Alltoallv(send, send_counts_.data(), send_displs_.data(), row, recv,
                                           recv_counts_.data(), recv_displs_.data(), row, comm_)
                           : MPI_Alltoallv(send, recv_counts_.data(), recv_displs_.data(), row, recv,
                                           send_counts_.data(), send_displs_.data(), row, comm_);
  MPI_Type_free(&row);
  check_mpi(code, "MPI_Alltoallv");
}

void AlltoallvDispatcher::dispatch(const std::uint8_t* x, std::size_t row_bytes,
                                   std::vector<std::uint8_t>& received) {
  sort_by_expert();
  permuted_.resize(order_.size() * row_bytes);
  for (std::size_t p = 0; p < order_.size(); ++p) {
    std::memcpy(&permuted_[p * row_bytes], x + order_[p] * row_bytes, row_bytes);
  }
  check_mpi(MPI_Alltoall(send_counts_.data(), 1, MPI_INT, recv_counts_.data(), 1, MPI_INT, comm_),
            "MPI_Alltoall");
  received_rows_ = 0;
  for (int r = 0; r < num_ranks_; ++r) {
    recv_displs_[r] = static_cast<int>(received_rows_);
    received_rows_ += recv_counts_[r];
  }
  received.resize(static_cast<std::size_t>(received_rows_) * row_bytes);
  exchange(permuted_.data(), row_bytes, received.data(), true);
}

void AlltoallvDispatcher::combine(const std::uint16_t* y, std::int64_t hidden,
                                  std::vector<std::uint16_t>& out) {
  returned_.resize(order_.size() * hidden);
  exchange(y, static_cast<std::size_t>(hidden) * 2, returned_.data(), false);
  // Megatron's unpermute: scatter-add every copy back onto its token, in permuted order (fixed, so
  // deterministic).
  std::vector<float> sum(static_cast<std::size_t>(num_tokens_ * hidden), 0.0f);
  for (std::size_t p = 0; p < order_.size(); ++p) {
    float* target = &sum[order_[p] * hidden];
    const std::uint16_t* row = &returned_[p * hidden];
    for (std::int64_t c = 0; c < hidden; ++c) target[c] += bf16_to_float(row[c]);
  }
  out.resize(sum.size());
  for (std::size_t i = 0; i < sum.size(); ++i) out[i] = float_to_bf16(sum[i]);
}

}  // namespace ferry::baseline
