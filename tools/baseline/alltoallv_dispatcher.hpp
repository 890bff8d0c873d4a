// What a Megatron-style AlltoAll token dispatcher does, over MPI: replicate each token once per selected
// expert and sort the copies by expert (= by destination rank, experts being contiguous per rank), exchange
// counts with MPI_Alltoall and rows with MPI_Alltoallv; combine sends the expert outputs back the same way
// and sums the top-k copies of each token (fp32 accumulation, bf16 result).
//
// Rows are opaque byte strings of a fixed size (bf16 values, or fp8 values followed by their fp32 scales),
// sent as one contiguous MPI datatype so counts stay in rows, not bytes.
#pragma once

#include <mpi.h>

#include <cstddef>
#include <cstdint>
#include <vector>

namespace ferry::baseline {

class AlltoallvDispatcher {
 public:
  // topk_idx: [T, K] of this rank; experts split evenly over the ranks of `comm`.
  AlltoallvDispatcher(MPI_Comm comm, const std::vector<std::int64_t>& topk_idx, std::int64_t num_tokens,
                      int topk, std::int64_t num_experts);
  ~AlltoallvDispatcher();
  AlltoallvDispatcher(const AlltoallvDispatcher&) = delete;
  AlltoallvDispatcher& operator=(const AlltoallvDispatcher&) = delete;

  // permute + counts + rows: x [T, row_bytes] -> received rows, grouped by source rank and, inside one
  // source, by (expert, token).
  void dispatch(const std::uint8_t* x, std::size_t row_bytes, std::vector<std::uint8_t>& received);
  // rows back + unpermute: y [received rows, H] bf16 -> out [T, H] bf16, the sum of each token's copies.
  void combine(const std::uint16_t* y, std::int64_t hidden, std::vector<std::uint16_t>& out);

  std::int64_t copies() const { return static_cast<std::int64_t>(order_.size()); }
  std::int64_t received_rows() const { return received_rows_; }
  const std::vector<int>& send_counts() const { return send_counts_; }  // rows to each rank
  const std::vector<int>& recv_counts() const { return recv_counts_; }  // rows from each rank

 private:
  void sort_by_expert();
  void exchange(const void* send, std::size_t row_bytes, void* recv, bool forward);

  MPI_Comm comm_;
  int num_ranks_ = 1;
  std::vector<std::int64_t> topk_idx_;
  std::int64_t num_tokens_ = 0;
  int topk_ = 1;
  std::int64_t num_experts_ = 1;
  std::vector<std::int64_t> order_;  // permuted position p holds token order_[p]
  std::vector<int> send_counts_, recv_counts_, send_displs_, recv_displs_;
  std::int64_t received_rows_ = 0;
  std::vector<std::uint8_t> permuted_;   // dispatch send buffer
  std::vector<std::uint16_t> returned_;  // combine receive buffer
};

}  // namespace ferry::baseline
