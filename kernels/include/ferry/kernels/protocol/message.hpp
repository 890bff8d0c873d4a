// What one ring slot holds.
//
// Slots have a fixed stride per ring family (sized from Config::max_hidden and max_topk), because rings live
// across operations and a slot index must always mean the same bytes; within a slot the message is laid out
// at fixed offsets and only its used prefix travels (header .. end of this operation's payload).
//
// Dispatch message: header {source rank, source token, target local-rank bitmask, ...}, the token's topk expert
// ids and weights that fall on the receiving node (-1 / 0 elsewhere), fp32 scales when the payload is fp8, then
// the row. Combine message: header, then the (partial) sum row. Notify message: header, then counts.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ferry/kernels/protocol/hd.hpp"
#include "ferry/kernels/protocol/numeric.hpp"

namespace ferry::kernels::protocol {

inline constexpr std::size_t kPayloadAlignment = 64;  // rows start on a cache line (TMA wants 16)
inline constexpr std::size_t kSlotAlignment = 128;    // slot strides

struct MessageHeader {
  std::int32_t source_rank;
  std::int32_t source_token;
  std::uint32_t local_rank_mask;  // dispatch: local ranks of the receiving node that get the token
  std::int32_t hidden;
  std::uint32_t operation;  // sequence number of the sending operation: every rank runs the same sequence
  std::uint8_t payload_kind;
  std::uint8_t num_topk;
  std::uint16_t reserved0;
  std::uint64_t reserved1;
};
static_assert(sizeof(MessageHeader) == 32, "the header is part of the wire format");

struct DispatchSlotFormat {
  std::size_t topk_ids = 0;      // int32[max_topk]
  std::size_t topk_weights = 0;  // float[max_topk]
  std::size_t scales = 0;        // float[scale_blocks(max_hidden)]
  std::size_t payload = 0;       // row, up to 4 bytes x max_hidden
  std::size_t stride = 0;

  FERRY_HD std::size_t used_bytes(PayloadKind kind, std::int64_t hidden) const {
    return payload + static_cast<std::size_t>(hidden) * element_bytes(kind);
  }
};

FERRY_HD inline DispatchSlotFormat make_dispatch_slot_format(std::int64_t max_hidden, int max_topk) {
  DispatchSlotFormat format;
  format.topk_ids = sizeof(MessageHeader);
  format.topk_weights = format.topk_ids + sizeof(std::int32_t) * max_topk;
  format.scales = align_up(format.topk_weights + sizeof(float) * max_topk, 16);
  format.payload = align_up(format.scales + sizeof(float) * scale_blocks(max_hidden), kPayloadAlignment);
  format.stride = align_up(format.payload + sizeof(float) * max_hidden, kSlotAlignment);
  return format;
}

struct CombineSlotFormat {
  std::size_t payload = 0;
  std::size_t stride = 0;

  FERRY_HD std::size_t used_bytes(PayloadKind kind, std::int64_t hidden) const {
    return payload + static_cast<std::size_t>(hidden) * element_bytes(kind);
  }
};

FERRY_HD inline CombineSlotFormat make_combine_slot_format(std::int64_t max_hidden) {
  CombineSlotFormat format;
  format.payload = align_up(sizeof(MessageHeader), kPayloadAlignment);
  format.stride = align_up(format.payload + sizeof(float) * max_hidden, kSlotAlignment);
  return format;
}

// Notify: what one rank tells another before a dispatch. The parameters let the receiver check that every rank
// runs the same operation; the counts place the received tokens.
struct NotifyHeader {
  std::uint32_t operation;
  std::int32_t source_rank;
  std::int32_t hidden;
  std::int32_t num_topk;
  std::int64_t num_experts;
  std::uint8_t payload_kind;
  std::uint8_t reserved[7];
};
static_assert(sizeof(NotifyHeader) == 32, "the header is part of the wire format");

// After the header: int64 tokens_to_rank[C] (tokens of each source channel the receiver gets), then int64
// tokens_to_node[C] (tokens of each source channel that touch the receiver's node: what its forwarder relays
// when it is the source's rail partner).
struct NotifySlotFormat {
  int num_channels = 0;
  std::size_t to_rank = 0;
  std::size_t to_node = 0;
  std::size_t stride = 0;

  FERRY_HD std::size_t used_bytes() const { return to_node + sizeof(std::int64_t) * num_channels; }
};

FERRY_HD inline NotifySlotFormat make_notify_slot_format(int num_channels) {
  NotifySlotFormat format;
  format.num_channels = num_channels;
  format.to_rank = sizeof(NotifyHeader);
  format.to_node = format.to_rank + sizeof(std::int64_t) * num_channels;
  format.stride = align_up(format.to_node + sizeof(std::int64_t) * num_channels, kSlotAlignment);
  return format;
}

}  // namespace ferry::kernels::protocol
