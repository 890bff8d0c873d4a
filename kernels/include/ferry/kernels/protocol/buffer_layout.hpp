// Where every ring lives in a rank's registered buffer.
//
// The buffer is symmetric: every rank computes the same layout from the same parameters, so an offset means
// the same thing in every rank's buffer and one-sided puts name offsets, never addresses.
//
// Ring families, each indexed by (channel, peer) — "peer" is the other end of the ring, seen from this rank:
//   notify         [1][R]  before a dispatch, every rank tells every rank what it will send (control)
//   dispatch_rdma  [C][N]  tokens from the rail partner on node `peer` (own node: this rank's own tokens)
//   dispatch_nvl   [C][L]  tokens forwarded by local rank `peer`
//   combine_nvl    [C][L]  result rows sent back by local rank `peer` to this forwarder
//   combine_rdma   [C][N]  partial sums from the forwarder on node `peer` (own node: this rank itself)
// Families that cross the fabric also have a staging area of the same shape in the sender's buffer: a message
// is assembled there and put from there, and the credit that frees the remote slot also frees the staging slot.
//
// Per ring, four 64-bit counters, each on its own cache line:
//   in_tail   (consumer side) messages published into this rank's ring (written by the producer)
//   in_head   (consumer side) messages this rank consumed (private)
//   out_head  (producer side) messages the peer consumed from the ring this rank fills there (written by it)
//   out_tail  (producer side) messages this rank published into the peer's ring (private)
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

enum class RingKind : std::uint8_t { notify, dispatch_rdma, dispatch_nvl, combine_nvl, combine_rdma };

struct RingFamily {
  RingKind kind = RingKind::notify;
  int channels = 0;
  int peers = 0;
  std::uint64_t slots = 0;
  std::size_t slot_bytes = 0;
  std::size_t counters = 0;  // offset of [channels][peers][4 counters]
  std::size_t data = 0;      // offset of [channels][peers][slots][slot_bytes]
  std::size_t staging = 0;   // same shape as data; meaningful only when has_staging
  bool has_staging = false;

  FERRY_HD std::size_t ring(int channel, int peer) const {
    return static_cast<std::size_t>(channel) * peers + peer;
  }
  FERRY_HD std::size_t data_bytes() const { return static_cast<std::size_t>(channels) * peers * slots * slot_bytes; }
  FERRY_HD std::size_t counter_bytes() const {
    return static_cast<std::size_t>(channels) * peers * kCountersPerRing * kCounterStride;
  }
  FERRY_HD std::size_t slot(int channel, int peer, std::uint64_t counter) const {
    return data + (ring(channel, peer) * slots + slot_of(counter, slots)) * slot_bytes;
  }
  FERRY_HD std::size_t staging_slot(int channel, int peer, std::uint64_t counter) const {
    return staging + (ring(channel, peer) * slots + slot_of(counter, slots)) * slot_bytes;
  }
  FERRY_HD std::size_t counter(int channel, int peer, int which) const {
    return counters + (ring(channel, peer) * kCountersPerRing + which) * kCounterStride;
  }
  FERRY_HD std::size_t in_tail(int channel, int peer) const { return counter(channel, peer, 0); }
  FERRY_HD std::size_t in_head(int channel, int peer) const { return counter(channel, peer, 1); }
  FERRY_HD std::size_t out_head(int channel, int peer) const { return counter(channel, peer, 2); }
  FERRY_HD std::size_t out_tail(int channel, int peer) const { return counter(channel, peer, 3); }
};

struct LayoutParams {
  Topology topo;
  std::int64_t max_hidden = 0;
  int max_topk = 0;
  std::uint64_t rdma_slots = 0;  // slots of rings that cross the fabric (dispatch_rdma, combine_rdma)
  std::uint64_t nvl_slots = 0;   // slots of rings inside a node (dispatch_nvl, combine_nvl)
  std::uint64_t notify_slots = 2;
};

struct BufferLayout {
  LayoutParams params;
  DispatchSlotFormat dispatch_slot;
  CombineSlotFormat combine_slot;
  NotifySlotFormat notify_slot;
  RingFamily notify;
  RingFamily dispatch_rdma;
  RingFamily dispatch_nvl;
  RingFamily combine_nvl;
  RingFamily combine_rdma;
  std::size_t total_bytes = 0;

  FERRY_HD const RingFamily& family(RingKind kind) const {
    switch (kind) {
      case RingKind::notify: return notify;
      case RingKind::dispatch_rdma: return dispatch_rdma;
      case RingKind::dispatch_nvl: return dispatch_nvl;
      case RingKind::combine_nvl: return combine_nvl;
      default: return combine_rdma;
    }
  }
};

// Counters of all families first (small, hot), then each family's slots, each region page-aligned.
FERRY_HD inline BufferLayout make_buffer_layout(const LayoutParams& params) {
  BufferLayout layout;
  layout.params = params;
  layout.dispatch_slot = make_dispatch_slot_format(params.max_hidden, params.max_topk);
  layout.combine_slot = make_combine_slot_format(params.max_hidden);
  layout.notify_slot = make_notify_slot_format(params.topo.num_channels);
  const Topology& topo = params.topo;
  int channels = topo.num_channels;

  auto shape = [](RingFamily& family, RingKind kind, int family_channels, int peers, std::uint64_t slots,
                  std::size_t slot_bytes, bool staged) {
    family.kind = kind;
    family.channels = family_channels;
    family.peers = peers;
    family.slots = slots;
    family.slot_bytes = slot_bytes;
    family.has_staging = staged;
  };
  shape(layout.notify, RingKind::notify, 1, topo.num_ranks(), params.notify_slots, layout.notify_slot.stride, true);
  shape(layout.dispatch_rdma, RingKind::dispatch_rdma, channels, topo.num_nodes, params.rdma_slots,
        layout.dispatch_slot.stride, true);
  shape(layout.dispatch_nvl, RingKind::dispatch_nvl, channels, topo.local_size, params.nvl_slots,
        layout.dispatch_slot.stride, false);
  shape(layout.combine_nvl, RingKind::combine_nvl, channels, topo.local_size, params.nvl_slots,
        layout.combine_slot.stride, false);
  shape(layout.combine_rdma, RingKind::combine_rdma, channels, topo.num_nodes, params.rdma_slots,
        layout.combine_slot.stride, true);

  RingFamily* families[] = {&layout.notify, &layout.dispatch_rdma, &layout.dispatch_nvl, &layout.combine_nvl,
                            &layout.combine_rdma};
  std::size_t offset = 0;
  for (RingFamily* family : families) {
    family->counters = offset;
    offset += family->counter_bytes();
  }
  for (RingFamily* family : families) {
    offset = align_up(offset, kRegionAlignment);
    family->data = offset;
    offset += family->data_bytes();
    if (family->has_staging) {
      offset = align_up(offset, kRegionAlignment);
      family->staging = offset;
      offset += family->data_bytes();
    }
  }
  layout.total_bytes = align_up(offset, kRegionAlignment);
  return layout;
}

}  // namespace ferry::kernels::protocol
