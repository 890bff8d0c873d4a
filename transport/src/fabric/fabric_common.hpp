// Pieces every fabric backend shares: ticket accounting, argument checks with messages that name the
// offender, and a tiny binary encoding for the descriptors exchanged through the store.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <string>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/transport/fabric.hpp"
#include "ferry/transport/store.hpp"

namespace ferry::transport::detail {

// Hands out tickets 1, 2, 3, ... and tracks which are done; completed() is the highest ticket with every
// ticket at or below it done. Operations finish out of order (different peers, different queue pairs).
class TicketLedger {
 public:
  std::uint64_t issue();
  void finish(std::uint64_t ticket);
  std::uint64_t completed() const { return completed_; }
  std::uint64_t last_issued() const { return next_ - 1; }
  bool all_done() const { return completed_ == next_ - 1; }

 private:
  std::uint64_t next_ = 1;
  std::uint64_t completed_ = 0;
  std::deque<bool> done_;  // done_[i] is ticket completed_ + 1 + i
};

// One registered region as the local rank sees it.
struct LocalRegion {
  void* base = nullptr;
  std::size_t bytes = 0;
  MemoryKind kind = MemoryKind::host;
};

// "rank 5 (node 2)", for messages about a peer.
inline std::string peer_label(const Peers& peers, int peer) {
  return "rank " + std::to_string(peer) + " (node " + std::to_string(peer / peers.local_size) + ")";
}

// Throws invalid_argument unless 0 <= peer < world_size.
void check_peer(const Peers& peers, int peer, const char* op);
// Throws invalid_argument unless [offset, offset + bytes) fits in a region of `region_bytes` bytes.
void check_range(const char* op, const char* side, int owner_rank, RegionId region, std::size_t offset,
                 std::size_t bytes, std::size_t region_bytes);
// Throws invalid_argument unless `offset` is 8-byte aligned (64-bit atomics).
void check_atomic_offset(const char* op, int peer, RegionId region, std::size_t offset);

// Little-endian, length-checked encoding of descriptor blobs.
class BlobWriter {
 public:
  void u32(std::uint32_t value);
  void u64(std::uint64_t value);
  void bytes(const void* data, std::size_t size);  // length-prefixed (u32)
  Bytes take() { return std::move(out_); }

 private:
  Bytes out_;
};

class BlobReader {
 public:
  // `what` names the blob's origin in error messages ("ucx descriptors of rank 3").
  BlobReader(const Bytes& in, std::string what) : in_(in), what_(std::move(what)) {}
  std::uint32_t u32();
  std::uint64_t u64();
  Bytes bytes();
  void expect_end() const;

 private:
  void need(std::size_t size) const;
  const Bytes& in_;
  std::string what_;
  std::size_t at_ = 0;
};

// True when ranks on different nodes run under one kernel (same boot id): an emulated cluster, where
// transports that think "same machine" (shared memory, cma) would cross the emulated node boundary, and can
// hang when the nodes sit in separate IPC/PID namespaces. Collective (one all_gather).
bool nodes_share_one_kernel(const Peers& peers);

// True when /sys/class/infiniband lists at least one device.
bool rdma_device_present();

}  // namespace ferry::transport::detail
