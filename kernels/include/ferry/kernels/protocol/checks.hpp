// Checks every role applies to a message header before trusting it: a message from another operation, another
// shape or an impossible sender means the ranks disagree about what they are doing, and the operation must
// fail loudly instead of producing a wrong answer.
#pragma once

#include <cstdint>
#include <cstring>

#include "ferry/kernels/protocol/hd.hpp"
#include "ferry/kernels/protocol/message.hpp"
#include "ferry/kernels/protocol/plan.hpp"
#include "ferry/kernels/protocol/step.hpp"

namespace ferry::kernels::protocol {

// A header of `T` at the start of a message slot. On a GPU, 16-byte loads when the slot is 16-byte aligned
// (slots are; a memcpy from a byte pointer cannot know that and loads byte by byte, on every message and by
// every thread of the group). Generic loads: the slot may be global or mapped host memory.
template <class T>
FERRY_HD inline T read_slot_header(const std::byte* slot) {
  T header;
#if defined(__CUDA_ARCH__)
  static_assert(sizeof(T) % 16 == 0, "a slot header is whole 16-byte words");
  if ((reinterpret_cast<std::uintptr_t>(slot) & 15u) == 0) {
    int4 words[sizeof(T) / 16];
    for (std::size_t i = 0; i < sizeof(T) / 16; ++i) words[i] = reinterpret_cast<const int4*>(slot)[i];
    std::memcpy(&header, words, sizeof(header));
    return header;
  }
#endif
  std::memcpy(&header, slot, sizeof(header));
  return header;
}

FERRY_HD inline MessageHeader read_header(const std::byte* slot) {
  return read_slot_header<MessageHeader>(slot);
}

FERRY_HD inline Fault make_fault(FaultKind kind, RingKind ring, int peer, std::int64_t got,
                                 std::int64_t expected) {
  Fault fault;
  fault.kind = kind;
  fault.ring = ring;
  fault.peer_rank = peer;
  fault.got = got;
  fault.expected = expected;
  return fault;
}

// Operation, shape and sender of a message that arrived from `peer` on `ring` and must come from `source`.
FERRY_HD inline Fault check_header(const MessageHeader& header, const OpContext& ctx, RingKind ring, int peer,
                                   int source) {
  if (header.operation != ctx.operation) {
    return make_fault(FaultKind::wrong_operation, ring, peer, header.operation, ctx.operation);
  }
  if (header.hidden != ctx.hidden)
    return make_fault(FaultKind::wrong_hidden, ring, peer, header.hidden, ctx.hidden);
  if (header.payload_kind != static_cast<std::uint8_t>(ctx.kind)) {
    return make_fault(FaultKind::wrong_payload, ring, peer, header.payload_kind, static_cast<int>(ctx.kind));
  }
  if (header.source_rank != source) {
    return make_fault(FaultKind::wrong_source, ring, peer, header.source_rank, source);
  }
  if (header.fingerprint != ctx.fingerprint) {
    return make_fault(FaultKind::wrong_settings, ring, peer, static_cast<std::int64_t>(header.fingerprint),
                      static_cast<std::int64_t>(ctx.fingerprint));
  }
  return {};
}

FERRY_HD inline MessageHeader make_header(const OpContext& ctx, int source_rank, std::int64_t source_token,
                                          std::uint32_t mask, int num_topk) {
  MessageHeader header{};
  header.source_rank = source_rank;
  header.source_token = static_cast<std::int32_t>(source_token);
  header.local_rank_mask = mask;
  header.hidden = static_cast<std::int32_t>(ctx.hidden);
  header.operation = ctx.operation;
  header.payload_kind = static_cast<std::uint8_t>(ctx.kind);
  header.num_topk = static_cast<std::uint8_t>(num_topk);
  header.fingerprint = ctx.fingerprint;
  return header;
}

}  // namespace ferry::kernels::protocol
