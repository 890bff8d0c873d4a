#include "ferry/config.hpp"

#include <string>

#include "ferry/core/error.hpp"
#include "protocol_params.hpp"

namespace ferry {

namespace {

[[noreturn]] void reject(const std::string& field, long long value, const std::string& why) {
  fail(Errc::invalid_argument, "Config::" + field + " = " + std::to_string(value) + " " + why);
}

void require_ring(const char* slots_name, int slots, const char* chunk_name, int chunk) {
  if (slots < 1 || !kernels::protocol::is_power_of_two(static_cast<std::uint64_t>(slots))) {
    reject(slots_name, slots, "must be a power of two >= 1");
  }
  if (chunk < 1 || chunk > slots) reject(chunk_name, chunk, "must be in [1, " + std::string(slots_name) + "]");
}

}  // namespace

void Config::validate(int num_nodes, int local_size) const {
  if (num_sms < 2 || num_sms % 2 != 0) reject("num_sms", num_sms, "must be even and >= 2 (a channel is 2 SMs)");
  if (max_nodes < 1) reject("max_nodes", max_nodes, "must be >= 1");
  if (max_hidden < 1) reject("max_hidden", max_hidden, "must be >= 1");
  if (max_topk < 1 || max_topk > 255) reject("max_topk", max_topk, "must be in [1, 255]");
  require_ring("rdma_ring_slots", rdma_ring_slots, "rdma_chunk", rdma_chunk);
  require_ring("nvl_ring_slots", nvl_ring_slots, "nvl_chunk", nvl_chunk);
  if (timeout <= Duration::zero()) reject("timeout", timeout.count(), "ns must be positive");
  if (host_workers < 0) reject("host_workers", host_workers, "must be >= 0 (0: automatic)");
  if (num_nodes < 1 || num_nodes > kernels::protocol::kMaxNodes) {
    fail(Errc::invalid_argument, "a cluster of " + std::to_string(num_nodes) + " nodes: ferry supports 1.." +
                                     std::to_string(kernels::protocol::kMaxNodes));
  }
  if (local_size < 1 || local_size > kernels::protocol::kMaxLocalRanks) {
    fail(Errc::invalid_argument, std::to_string(local_size) + " ranks per node: ferry supports 1.." +
                                     std::to_string(kernels::protocol::kMaxLocalRanks));
  }
}

kernels::protocol::LayoutParams layout_params(const Config& config, int num_nodes, int local_size) {
  kernels::protocol::LayoutParams params;
  params.topo = {num_nodes, local_size, config.num_channels()};
  params.max_hidden = config.max_hidden;
  params.max_topk = config.max_topk;
  params.rdma_slots = static_cast<std::uint64_t>(config.rdma_ring_slots);
  params.nvl_slots = static_cast<std::uint64_t>(config.nvl_ring_slots);
  return params;
}

std::size_t registered_bytes(const Config& config, const kernels::protocol::BufferLayout& layout) {
  if (config.buffer_bytes == 0) return layout.total_bytes;
  if (config.buffer_bytes < layout.total_bytes) {
    fail(Errc::invalid_argument,
         "Config::buffer_bytes = " + std::to_string(config.buffer_bytes) + " is too small for this config: it needs " +
             std::to_string(layout.total_bytes) + " bytes (max_hidden " + std::to_string(config.max_hidden) +
             ", max_topk " + std::to_string(config.max_topk) + ", " + std::to_string(config.num_channels()) +
             " channels, rdma_ring_slots " + std::to_string(config.rdma_ring_slots) + ", nvl_ring_slots " +
             std::to_string(config.nvl_ring_slots) + "; see buffer_size_hint())");
  }
  return config.buffer_bytes;
}

std::size_t buffer_size_hint(const Config& config, int num_nodes, int local_size) {
  config.validate(num_nodes, local_size);
  return kernels::protocol::make_buffer_layout(layout_params(config, num_nodes, local_size)).total_bytes;
}

}  // namespace ferry
