// The memory a Buffer of a multi-process job runs over: the registered buffer in POSIX shared memory mapped
// by every local rank (the NVLink stand-in), and, when the job spans nodes, a fabric driven by a proxy thread
// that executes the puts and signals the channel workers post into its command rings (one ring per worker).
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "ferry/group.hpp"
#include "ferry/kernels/host/memory.hpp"
#include "ferry/kernels/protocol/buffer_layout.hpp"
#include "ferry/transport/fabric.hpp"
#include "ferry/transport/peer_memory.hpp"
#include "ferry/transport/proxy.hpp"

namespace ferry {

class GroupTransport {
 public:
  // Collective over the job. `workers`: channel workers of this rank, one command ring each.
  GroupTransport(Group& group, const kernels::protocol::BufferLayout& layout, std::size_t bytes, int workers,
                 Duration timeout);
  // Any region: `signals_end` bounds the offsets of the words signals add to (they must fit 32 bits), `tag`
  // names the shared-memory segment (one per region of a job), `reserve_pages` = false leaves its pages to
  // first touch (make_shm_peer_memory). `isolate_peer_failures`: a rank of another node whose connection
  // fails is given up alone (writes to it complete without sending) instead of failing every later write, for
  // an owner that skips dead ranks (the low-latency mode, which learns them from the store); ucx only: the
  // verbs fabric cannot, and a failed peer still fails its proxy.
  GroupTransport(Group& group, std::size_t bytes, std::size_t signals_end, int workers, Duration timeout,
                 const std::string& tag, bool reserve_pages = true, bool isolate_peer_failures = false);
  // Collective: waits until this rank's puts have landed, meets the other ranks, then releases the fabric and
  // the shared memory, so no rank tears down memory a peer still writes into.
  ~GroupTransport();
  GroupTransport(const GroupTransport&) = delete;
  GroupTransport& operator=(const GroupTransport&) = delete;

  kernels::host::RankMemory memory();

 private:
  class NodeView;
  class ProxyMemory;
  class Health;

  Group& group_;
  std::unique_ptr<transport::PeerMemory> shared_;
  std::unique_ptr<transport::Proxy> proxy_;
  bool isolating_ = false;  // the fabric gives a failed peer up alone
  std::unique_ptr<NodeView> node_;
  std::unique_ptr<ProxyMemory> remote_;
  std::unique_ptr<Health> health_;
};

}  // namespace ferry
