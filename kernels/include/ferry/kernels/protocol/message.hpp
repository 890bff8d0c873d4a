// What one ring slot holds.
//
// A message is laid out for its operation: the format depends on the element type, the hidden size and
// whether topk ids and weights travel, so every operation sizes its slots to its own rows (RingWindow in
// ring.hpp) and a chunk of contiguous slots is contiguous bytes that one fabric put can carry. Only the used
// prefix of a slot matters (the last slot of a chunk travels without its padding).
//
// Dispatch message: header {source rank, source token, target local-rank bitmask, ...}, the token's topk
// expert ids and weights that fall on the receiving node (-1 / 0 elsewhere; absent in a cached dispatch),
// fp32 scales when the payload is fp8, then the row. Combine message: header, the row's topk weights when
// combine returns them, then the (partial) sum row. Notify message: header, then counts.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ferry/kernels/protocol/hd.hpp"
#include "ferry/kernels/protocol/numeric.hpp"

namespace ferry::kernels::protocol {

inline constexpr std::size_t kRowAlignment = 16;    // rows start 16-byte aligned (vector copies, TMA)
inline constexpr std::size_t kSlotAlignment = 128;  // slot strides: whole cache lines on CPU and GPU

struct MessageHeader {
  std::int32_t source_rank;
  std::int32_t source_token;
  std::uint32_t local_rank_mask;  // dispatch: local ranks of the receiving node that get the token
  std::int32_t hidden;
  std::uint32_t operation;  // sequence number of the sending operation: every rank runs the same sequence
  std::uint8_t payload_kind;
  std::uint8_t num_topk;
  std::uint16_t reserved0;
  std::uint64_t fingerprint;  // of the settings both ends must share (chunk sizes decide credit batching)
};
static_assert(sizeof(MessageHeader) == 32, "the header is part of the wire format");

struct DispatchFormat {
  int num_topk = 0;              // ids and weights per message (0: none travel)
  std::size_t topk_ids = 0;      // int32[num_topk]
  std::size_t topk_weights = 0;  // float[num_topk]
  std::size_t scales = 0;        // float[scale_blocks(hidden)] when fp8
  std::size_t payload = 0;       // the row
  std::size_t used = 0;          // bytes that travel
  std::size_t stride = 0;        // bytes between slots

  FERRY_HD std::size_t row_bytes() const { return used - payload; }
};

FERRY_HD inline DispatchFormat dispatch_format(PayloadKind kind, std::int64_t hidden, int num_topk) {
  DispatchFormat format;
  format.num_topk = num_topk;
  format.topk_ids = sizeof(MessageHeader);
  format.topk_weights = format.topk_ids + sizeof(std::int32_t) * num_topk;
  format.scales = align_up(format.topk_weights + sizeof(float) * num_topk, kRowAlignment);
  std::size_t scale_bytes = kind == PayloadKind::fp8_e4m3 ? sizeof(float) * scale_blocks(hidden) : 0;
  format.payload = align_up(format.scales + scale_bytes, kRowAlignment);
  format.used = format.payload + static_cast<std::size_t>(hidden) * element_bytes(kind);
  format.stride = align_up(format.used, kSlotAlignment);
  return format;
}

// The largest dispatch stride a buffer sized for (max_hidden, max_topk) must hold: fp32 rows, or fp8 rows
// with their scales, topk travelling.
FERRY_HD inline std::size_t max_dispatch_stride(std::int64_t max_hidden, int max_topk) {
  std::size_t fp32 = dispatch_format(PayloadKind::fp32, max_hidden, max_topk).stride;
  std::size_t fp8 = dispatch_format(PayloadKind::fp8_e4m3, max_hidden, max_topk).stride;
  return fp32 > fp8 ? fp32 : fp8;
}

struct CombineFormat {
  int num_topk = 0;              // weights per message (0: combine does not return weights)
  std::size_t topk_weights = 0;  // float[num_topk]
  std::size_t payload = 0;
  std::size_t used = 0;
  std::size_t stride = 0;

  FERRY_HD std::size_t row_bytes() const { return used - payload; }
};

FERRY_HD inline CombineFormat combine_format(PayloadKind kind, std::int64_t hidden, int num_topk) {
  CombineFormat format;
  format.num_topk = num_topk;
  format.topk_weights = sizeof(MessageHeader);
  format.payload = align_up(format.topk_weights + sizeof(float) * num_topk, kRowAlignment);
  format.used = format.payload + static_cast<std::size_t>(hidden) * element_bytes(kind);
  format.stride = align_up(format.used, kSlotAlignment);
  return format;
}

FERRY_HD inline std::size_t max_combine_stride(std::int64_t max_hidden, int max_topk) {
  return combine_format(PayloadKind::fp32, max_hidden, max_topk).stride;
}

// Notify: what one rank tells another before a dispatch. The parameters let the receiver check that every
// rank runs the same operation with the same settings; the counts place the received tokens.
struct NotifyHeader {
  std::uint32_t operation;
  std::int32_t source_rank;
  std::int32_t hidden;
  std::int32_t num_topk;
  std::int64_t num_experts;
  std::uint8_t payload_kind;
  std::uint8_t reserved0[3];
  std::int32_t num_channels;  // channels of this operation
  std::uint64_t fingerprint;  // of the settings every rank must share (Config, chunk sizes)
  std::uint64_t reserved1[3];
};
static_assert(sizeof(NotifyHeader) == 64, "the header is part of the wire format");

// After the header: int64 tokens_to_rank[C] (tokens of each source channel the receiver gets), then int64
// tokens_to_node[C] (tokens of each source channel that touch the receiver's node: what its forwarder relays
// when it is the source's rail partner). C is the buffer's channel count; an operation uses the first ones.
struct NotifyFormat {
  int num_channels = 0;
  std::size_t to_rank = 0;
  std::size_t to_node = 0;
  std::size_t used = 0;
  std::size_t stride = 0;
};

FERRY_HD inline NotifyFormat notify_format(int num_channels) {
  NotifyFormat format;
  format.num_channels = num_channels;
  format.to_rank = sizeof(NotifyHeader);
  format.to_node = format.to_rank + sizeof(std::int64_t) * num_channels;
  format.used = format.to_node + sizeof(std::int64_t) * num_channels;
  format.stride = align_up(format.used, kSlotAlignment);
  return format;
}

}  // namespace ferry::kernels::protocol
