// The protocol's Io policy on the host (see protocol/endpoints.hpp): plain pointers for this node, a
// RemoteWriter for other nodes, and a Traffic tally owned by the worker that steps the roles.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ferry/kernels/host/memory.hpp"
#include "ferry/kernels/protocol/step.hpp"

namespace ferry::kernels::host {

class HostIo {
 public:
  HostIo(std::byte* local, const NodeMemory* node, RemoteWriter* remote, protocol::Traffic* traffic)
      : local_(local), node_(node), remote_(remote), traffic_(traffic) {}

  std::byte* local() const { return local_; }
  std::byte* node_peer(int local_rank) const { return node_->base(local_rank); }
  void put(int rank, std::size_t src_offset, std::size_t dst_offset, std::size_t bytes) {
    remote_->put(rank, src_offset, dst_offset, bytes);
  }
  void signal(int rank, std::size_t word_offset, std::uint64_t add) { remote_->signal(rank, word_offset, add); }
  protocol::Traffic& traffic() { return *traffic_; }
  void set_traffic(protocol::Traffic* traffic) { traffic_ = traffic; }

 private:
  std::byte* local_;
  const NodeMemory* node_;
  RemoteWriter* remote_;
  protocol::Traffic* traffic_;
};

}  // namespace ferry::kernels::host
