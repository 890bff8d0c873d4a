// DeepEP's get_dispatch_layout on the GPU: from topk_idx [T, K] (device memory) the tokens per rank, per node
// and per expert, and is_token_in_rank [T, R], with the same checks as ferry::compute_layout (an id out of
// range, an expert named twice, a token over the node limit), reported by check() with the same words.
#pragma once

#include <cstdint>
#include <memory>

namespace ferry::kernels::cuda {

struct DeviceLayoutOutputs {
  std::int64_t* tokens_per_rank = nullptr;    // [R]
  std::int64_t* tokens_per_node = nullptr;    // [R / L]
  std::int64_t* tokens_per_expert = nullptr;  // [E]
  std::uint8_t* in_rank = nullptr;            // [T, R]
};

class DeviceLayout {
 public:
  explicit DeviceLayout(int device);
  ~DeviceLayout();
  DeviceLayout(const DeviceLayout&) = delete;
  DeviceLayout& operator=(const DeviceLayout&) = delete;

  // Enqueues the layout of `topk_idx` on `stream` (a cudaStream_t); the outputs are zeroed first.
  void compute(const std::int64_t* topk_idx, std::int64_t num_tokens, int num_topk, std::int64_t num_experts,
               int num_ranks, int local_size, int max_nodes, const DeviceLayoutOutputs& out, void* stream);
  // Once the stream has passed the layout: throws Errc::invalid_argument naming the first bad token found.
  void check();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::kernels::cuda
