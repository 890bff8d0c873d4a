#include <cuda_runtime.h>

#include <string>

#include "device_memory.cuh"
#include "ferry/kernels/cuda/device_layout.hpp"
#include "ferry/kernels/protocol/hd.hpp"

namespace ferry::kernels::cuda {

namespace {

enum class LayoutFault : std::int32_t { none = 0, out_of_range = 1, duplicate = 2, too_many_nodes = 3 };

// The first bad token some thread found (mapped host memory).
struct LayoutError {
  std::int32_t fault;
  std::int32_t slot;
  std::int32_t other_slot;
  std::int32_t nodes;
  std::int64_t token;
  std::int64_t value;
  std::uint64_t node_mask;
};

// The first thread to claim (an atomic in device memory: atomics on mapped host memory need PCIe atomics)
// writes the record, its fault word last.
__device__ void report(LayoutError* error, std::uint32_t* claim, LayoutFault fault, std::int64_t token,
                       int slot, int other_slot, std::int64_t value, std::uint64_t node_mask, int nodes) {
  if (atomicCAS(claim, 0u, 1u) != 0u) return;
  volatile LayoutError* record = error;
  record->token = token;
  record->slot = slot;
  record->other_slot = other_slot;
  record->value = value;
  record->node_mask = node_mask;
  record->nodes = nodes;
  __threadfence_system();
  record->fault = static_cast<std::int32_t>(fault);
  __threadfence_system();
}

// One thread per token: its row of is_token_in_rank and its share of the counts.
__global__ void layout_kernel(const std::int64_t* topk_idx, std::int64_t num_tokens, int num_topk,
                              std::int64_t num_experts, int num_ranks, int local_size, int max_nodes,
                              DeviceLayoutOutputs out, LayoutError* error, std::uint32_t* claim) {
  const std::int64_t experts_per_rank = num_experts / num_ranks;
  for (std::int64_t t = blockIdx.x * static_cast<std::int64_t>(blockDim.x) + threadIdx.x; t < num_tokens;
       t += static_cast<std::int64_t>(gridDim.x) * blockDim.x) {
    const std::int64_t* row = topk_idx + t * num_topk;
    std::uint8_t* in_rank = out.in_rank + t * num_ranks;
    std::uint64_t nodes = 0;
    bool valid = true;
    for (int k = 0; k < num_topk && valid; ++k) {
      const std::int64_t expert = row[k];
      if (expert == -1) continue;
      if (expert < -1 || expert >= num_experts) {
        report(error, claim, LayoutFault::out_of_range, t, k, -1, expert, 0, 0);
        valid = false;
        break;
      }
      for (int j = 0; j < k; ++j) {
        if (row[j] == expert) {
          report(error, claim, LayoutFault::duplicate, t, k, j, expert, 0, 0);
          valid = false;
          break;
        }
      }
      nodes |= std::uint64_t{1} << (expert / experts_per_rank / local_size);
    }
    if (!valid) continue;
    const int touched = protocol::popcount64(nodes);
    if (touched > max_nodes) {
      report(error, claim, LayoutFault::too_many_nodes, t, -1, -1, 0, nodes, touched);
      continue;
    }
    for (int k = 0; k < num_topk; ++k) {
      const std::int64_t expert = row[k];
      if (expert < 0) continue;
      atomicAdd(reinterpret_cast<unsigned long long*>(out.tokens_per_expert + expert), 1ull);
      in_rank[expert / experts_per_rank] = 1;
    }
    for (int r = 0; r < num_ranks; ++r) {
      if (in_rank[r] != 0) atomicAdd(reinterpret_cast<unsigned long long*>(out.tokens_per_rank + r), 1ull);
    }
    for (int node = 0; node < num_ranks / local_size; ++node) {
      if (nodes >> node & 1u)
        atomicAdd(reinterpret_cast<unsigned long long*>(out.tokens_per_node + node), 1ull);
    }
  }
}

std::string node_list(std::uint64_t mask) {
  std::string text;
  for (int node = 0; node < 64; ++node) {
    if (!(mask >> node & 1u)) continue;
    text += (text.empty() ? "" : ", ") + std::to_string(node);
  }
  return text;
}

}  // namespace

struct DeviceLayout::Impl {
  int device = 0;
  MappedArray<LayoutError> error;
  DeviceArray<std::uint32_t> claim;  // reset before every layout
  std::int64_t num_experts = 0;
  int max_nodes = 0;
};

DeviceLayout::DeviceLayout(int device) : impl_(std::make_unique<Impl>()) {
  impl_->device = device;
  DeviceScope scope(device);
  impl_->error = MappedArray<LayoutError>(1);
  impl_->claim = DeviceArray<std::uint32_t>(1);
}

DeviceLayout::~DeviceLayout() = default;

void DeviceLayout::compute(const std::int64_t* topk_idx, std::int64_t num_tokens, int num_topk,
                           std::int64_t num_experts, int num_ranks, int local_size, int max_nodes,
                           const DeviceLayoutOutputs& out, void* stream_handle) {
  auto stream = static_cast<cudaStream_t>(stream_handle);
  if (num_ranks < 1 || local_size < 1 || num_ranks % local_size != 0 || num_ranks / local_size > 64) {
    fail(Errc::invalid_argument, std::to_string(num_ranks) + " ranks cannot form nodes of " +
                                     std::to_string(local_size) + " local ranks (at most 64 nodes)");
  }
  if (num_experts <= 0 || num_experts % num_ranks != 0) {
    fail(Errc::invalid_argument, "num_experts " + std::to_string(num_experts) +
                                     " is not a positive multiple of the " + std::to_string(num_ranks) +
                                     " ranks (experts are split evenly over ranks)");
  }
  if (num_topk > num_experts) {
    fail(Errc::invalid_argument, "topk_idx has " + std::to_string(num_topk) +
                                     " slots per token but there are only " + std::to_string(num_experts) +
                                     " experts");
  }
  DeviceScope scope(impl_->device);
  impl_->num_experts = num_experts;
  impl_->max_nodes = max_nodes;
  cuda::check(cudaMemsetAsync(out.tokens_per_rank, 0, sizeof(std::int64_t) * num_ranks, stream),
              "layout: zero");
  cuda::check(
      cudaMemsetAsync(out.tokens_per_node, 0, sizeof(std::int64_t) * (num_ranks / local_size), stream),
      "layout: zero");
  cuda::check(cudaMemsetAsync(out.tokens_per_expert, 0, sizeof(std::int64_t) * num_experts, stream),
              "layout: zero");
  if (num_tokens == 0) return;
  cuda::check(cudaMemsetAsync(out.in_rank, 0, static_cast<std::size_t>(num_tokens) * num_ranks, stream),
              "layout: zero");
  impl_->claim.zero(stream);
  constexpr int kThreads = 256;
  const auto blocks =
      static_cast<unsigned>(std::min<std::int64_t>((num_tokens + kThreads - 1) / kThreads, 1024));
  // The launch's own status: cudaGetLastError would also return an earlier call's error as this one's.
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(blocks);
  config.blockDim = dim3(kThreads);
  config.stream = stream;
  cuda::check(
      cudaLaunchKernelEx(&config, layout_kernel, topk_idx, num_tokens, num_topk, num_experts, num_ranks,
                         local_size, max_nodes, out, impl_->error.device(), impl_->claim.data()),
      "layout kernel launch");
}

void DeviceLayout::check() {
  const LayoutError found = *impl_->error.host();
  *impl_->error.host() = LayoutError{};
  const std::string token = std::to_string(found.token);
  switch (static_cast<LayoutFault>(found.fault)) {
    case LayoutFault::none:
      return;
    case LayoutFault::out_of_range:
      fail(Errc::invalid_argument, "topk_idx[" + token + "][" + std::to_string(found.slot) + "] = " +
                                       std::to_string(found.value) + " is out of range: experts are [0, " +
                                       std::to_string(impl_->num_experts) + ") and -1 marks an empty slot");
    case LayoutFault::duplicate:
      fail(Errc::invalid_argument, "token " + token + " names expert " + std::to_string(found.value) +
                                       " twice (topk_idx slots " + std::to_string(found.other_slot) +
                                       " and " + std::to_string(found.slot) + ")");
    case LayoutFault::too_many_nodes:
      fail(Errc::invalid_argument, "token " + token + " touches " + std::to_string(found.nodes) + " nodes (" +
                                       node_list(found.node_mask) + ") but max_nodes is " +
                                       std::to_string(impl_->max_nodes));
  }
  fail(Errc::internal, "layout: unknown fault " + std::to_string(found.fault));
}

}  // namespace ferry::kernels::cuda
