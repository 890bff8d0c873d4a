// Where every ring lives in a rank's registered buffer.
//
// The buffer is symmetric: every rank computes the same layout from the same parameters, so an offset means
// the same thing in every rank's buffer and one-sided puts name offsets, never addresses.
//
// Ring families, each indexed by (channel, peer) — "peer" names the other end of the ring as seen from this
// rank; NR = N - 1 remote nodes, numbered by remote_index() (topology.hpp):
//   notify          [1][R]     before a dispatch, every rank tells every rank what it will send (control)
//   dispatch_rdma   [C][NR]    tokens from the rail partner on a remote node (fabric)
//   dispatch_nvl    [C][L*NR]  tokens of remote node m forwarded by local rank l: peer l * NR + remote(m)
//   dispatch_direct [C][L]     tokens of this node's local rank l, written by its sender directly
//   combine_direct  [C][L]     result rows local rank l returns for this rank's own tokens it received
//   directly combine_nvl     [C][L*NR]  result rows local rank l returns to this forwarder for tokens of
//   remote node m combine_rdma    [C][NR]    partial sums from the forwarder on a remote node (fabric)
// A rank never uses a ring to itself: a token it sends to itself, forwards to itself, or returns to itself is
// written or read where it ends up (the output rows, or the expert results) instead.
// Families that cross the fabric also have a staging area of the same shape in the sender's buffer: messages
// are assembled there and put from there, and the credit that frees the remote slot also frees the staging
// slot.
//
// Each ring has a fixed number of bytes (slots x the largest message the buffer is sized for); an operation
// cuts them into slots of its own stride (RingWindow, ring.hpp). Per ring, four 64-bit counters, each on its
// own cache line:
//   in_tail   (consumer side) messages published into this rank's ring (written by the producer)
//   in_head   (consumer side) messages this rank consumed (private to the consumer)
//   out_head  (producer side) messages the peer consumed from the ring this rank fills there (written by it)
//   out_tail  (producer side) messages this rank published into the peer's ring (private to the producer)
#pragma once

#include <cstddef>
#include <cstdint>

#include "ferry/kernels/protocol/hd.hpp"
#include "ferry/kernels/protocol/message.hpp"
#include "ferry/kernels/protocol/ring.hpp"
#include "ferry/kernels/protocol/topology.hpp"

namespace ferry::kernels::protocol {

inline constexpr std::size_t kCounterStride = 64;
inline constexpr std::size_t kCountersPerRing = 4;
inline constexpr std::size_t kRegionAlignment = 4096;

enum class RingKind : std::uint8_t {
  notify,
  dispatch_rdma,
  dispatch_nvl,
  dispatch_direct,
  combine_direct,
  combine_nvl,
  combine_rdma,
};
inline constexpr int kRingKinds = 7;

struct RingFamily {
  RingKind kind = RingKind::notify;
  int channels = 0;
  int peers = 0;
  std::size_t ring_bytes = 0;  // bytes of one ring's slots
  std::size_t counters = 0;    // offset of [channels][peers][4 counters]
  std::size_t data = 0;        // offset of [channels][peers][ring_bytes]
  std::size_t staging = 0;     // same shape as data; meaningful only when has_staging
  bool has_staging = false;

  FERRY_HD std::size_t ring(int channel, int peer) const {
    return static_cast<std::size_t>(channel) * peers + peer;
  }
  FERRY_HD std::size_t data_bytes() const { return static_cast<std::size_t>(channels) * peers * ring_bytes; }
  FERRY_HD std::size_t counter_bytes() const {
    return static_cast<std::size_t>(channels) * peers * kCountersPerRing * kCounterStride;
  }
  FERRY_HD std::size_t ring_data(int channel, int peer) const {
    return data + ring(channel, peer) * ring_bytes;
  }
  FERRY_HD std::size_t staging_data(int channel, int peer) const {
    return staging + ring(channel, peer) * ring_bytes;
  }
  FERRY_HD std::size_t counter(int channel, int peer, int which) const {
    return counters + (ring(channel, peer) * kCountersPerRing + which) * kCounterStride;
  }
  FERRY_HD std::size_t in_tail(int channel, int peer) const { return counter(channel, peer, 0); }
  FERRY_HD std::size_t in_head(int channel, int peer) const { return counter(channel, peer, 1); }
  FERRY_HD std::size_t out_head(int channel, int peer) const { return counter(channel, peer, 2); }
  FERRY_HD std::size_t out_tail(int channel, int peer) const { return counter(channel, peer, 3); }
  // Slots of `stride` bytes one operation gets on each ring of this family (>= the configured slots for any
  // message the buffer is sized for).
  FERRY_HD std::uint64_t window_slots(std::size_t stride) const { return ring_bytes / stride; }
};

struct LayoutParams {
  Topology topo;  // num_channels: the most channels any operation will use
  std::int64_t max_hidden = 0;
  int max_topk = 0;
  std::uint64_t rdma_slots = 0;  // slots of largest messages per ring that crosses the fabric
  std::uint64_t nvl_slots = 0;   // slots of largest messages per ring inside a node
  std::uint64_t notify_slots = 2;
};

struct BufferLayout {
  LayoutParams params;
  NotifyFormat notify_format;
  std::size_t dispatch_stride = 0;  // largest dispatch message stride
  std::size_t combine_stride = 0;   // largest combine message stride
  RingFamily families[kRingKinds];
  std::size_t total_bytes = 0;

  FERRY_HD const RingFamily& family(RingKind kind) const { return families[static_cast<int>(kind)]; }
};

// Counters of all families first (small, hot, and within the first 4 GiB for 32-bit signal offsets), then
// each family's slots, each region page-aligned.
FERRY_HD inline BufferLayout make_buffer_layout(const LayoutParams& params) {
  BufferLayout layout;
  layout.params = params;
  const Topology& topo = params.topo;
  const int C = topo.num_channels;
  const int L = topo.local_size;
  const int NR = topo.num_remote_nodes();
  layout.notify_format = notify_format(C);
  layout.dispatch_stride = max_dispatch_stride(params.max_hidden, params.max_topk);
  layout.combine_stride = max_combine_stride(params.max_hidden, params.max_topk);

  struct Shape {
    RingKind kind;
    int channels;
    int peers;
    std::size_t ring_bytes;
    bool staged;
  };
  const std::size_t rdma_dispatch = params.rdma_slots * layout.dispatch_stride;
  const std::size_t nvl_dispatch = params.nvl_slots * layout.dispatch_stride;
  const std::size_t rdma_combine = params.rdma_slots * layout.combine_stride;
  const std::size_t nvl_combine = params.nvl_slots * layout.combine_stride;
  const Shape shapes[kRingKinds] = {
      {RingKind::notify, 1, topo.num_ranks(), params.notify_slots * layout.notify_format.stride, true},
      {RingKind::dispatch_rdma, C, NR, rdma_dispatch, true},
      {RingKind::dispatch_nvl, C, L * NR, nvl_dispatch, false},
      {RingKind::dispatch_direct, C, L, nvl_dispatch, false},
      {RingKind::combine_direct, C, L, nvl_combine, false},
      {RingKind::combine_nvl, C, L * NR, nvl_combine, false},
      {RingKind::combine_rdma, C, NR, rdma_combine, true},
  };
  std::size_t offset = 0;
  for (int i = 0; i < kRingKinds; ++i) {
    RingFamily& family = layout.families[i];
    family.kind = shapes[i].kind;
    family.channels = shapes[i].channels;
    family.peers = shapes[i].peers;
    family.ring_bytes = shapes[i].ring_bytes;
    family.has_staging = shapes[i].staged;
    family.counters = offset;
    offset += family.counter_bytes();
  }
  for (RingFamily& family : layout.families) {
    offset = align_up(offset, kRegionAlignment);
    family.data = offset;
    offset += family.data_bytes();
    if (family.has_staging) {
      offset = align_up(offset, kRegionAlignment);
      family.staging = offset;
      offset += family.data_bytes();
    }
  }
  layout.total_bytes = align_up(offset, kRegionAlignment);
  return layout;
}

}  // namespace ferry::kernels::protocol
