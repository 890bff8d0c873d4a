// Every rank of an emulated N x L cluster inside one process: one buffer per rank, intra-node peer memory as
// plain pointers, and inter-node puts as memcpy followed by a release fetch_add on the signal word — the same
// ordering a fabric gives (payload before signal). Threads act as ranks; the whole protocol runs without
// processes, and a ledger records which rank put how much into which, so tests can check the paths taken.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "ferry/kernels/host/memory.hpp"
#include "ferry/kernels/protocol/buffer_layout.hpp"

namespace ferry::kernels::host {

// Data puts between two ranks, by the ring family they landed in.
struct PutTally {
  std::uint64_t puts = 0;
  std::uint64_t bytes = 0;
};

class LocalWorld {
 public:
  explicit LocalWorld(const protocol::BufferLayout& layout);
  // Regions of `bytes` bytes without rings (the low-latency mode's): puts are not classified by family.
  LocalWorld(const protocol::Topology& topo, std::size_t bytes);
  ~LocalWorld();
  LocalWorld(const LocalWorld&) = delete;
  LocalWorld& operator=(const LocalWorld&) = delete;

  const protocol::BufferLayout& layout() const { return layout_; }
  std::size_t bytes() const { return layout_.total_bytes; }
  int num_ranks() const { return layout_.params.topo.num_ranks(); }
  RankMemory memory(int rank);

  // Puts from `source` into `target` that landed in slots of `kind` (notify, dispatch_rdma or combine_rdma).
  PutTally puts(int source, int target, protocol::RingKind kind) const;

  std::byte* buffer(int rank) const { return buffers_[rank].get(); }
  void record_put(int source, int target, std::size_t dst_offset, std::size_t bytes);

 private:
  struct Free {
    void operator()(std::byte* pointer) const;
  };
  class Node;
  class Remote;

  protocol::BufferLayout layout_;
  std::vector<std::unique_ptr<std::byte[], Free>> buffers_;
  std::vector<std::unique_ptr<Node>> nodes_;
  std::vector<std::unique_ptr<Remote>> remotes_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> ledger_;  // [source][target][family][puts, bytes]
  bool with_rings_ = true;
};

}  // namespace ferry::kernels::host
