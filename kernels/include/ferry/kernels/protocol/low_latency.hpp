// The low-latency (decode) mode: one registered region per rank, laid out expert-major, and the numeric
// conventions both executors share (DESIGN.md "Low-latency mode"; DeepEP's low_latency_dispatch/combine).
//
// Every sender puts each (token, expert) row straight into the slot it owns at the expert's rank: slot
// (local expert, source rank, position), where position is the row's rank among the sender's rows for that
// expert in (token, topk slot) order. Within a node the slot gets only the row's header and the receiver
// copies the row from the sender's region (its token scratch), so an intra-node row is copied once; across
// nodes the whole message is put. Nothing is exchanged before the data and every slot exists for the
// worst case (all of a rank's tokens on one expert), so no host ever waits for a count. After its rows, the
// sender publishes to each destination rank one block of counts (one per local expert of the destination)
// and then one arrival word; the receiver waits for each source's arrival and packs the rows per local expert
// in (source rank, position) order. Combine is the way back: the expert's rank returns the rows it received
// from a source as one contiguous block per expert into that source's slots (global expert, position), then
// its block of counts and its arrival word, and the source sums each token's rows with its topk weights in
// topk order. One arrival per (operation, peer) instead of one word per (expert, peer): across nodes a word
// is a fabric atomic, and over UCX's tcp transport each costs a message and its acknowledgement (256 per
// rank and operation at 256 experts over 4 ranks, most of the mode's system calls on the host).
//
// Two buffers alternate (operation n uses buffer n % 2), so the receive half of one operation can wait while
// the next one is issued. Before a sender writes into a peer's buffer again it waits until the peer has
// released the buffer's previous use (a release word the peer bumps once it has taken the receives), so a
// rank that runs ahead never overwrites rows a slower one has not read. It counts the releases due from each
// peer (one per use the peer took part in: unmasked when the use began), so a peer masked after it took
// part in a use is still waited for until it has read what that use left it (a caller may mask a live rank
// whose previous operation still reads this rank's memory), and one masked throughout owes nothing.
//
// The region of one rank (R ranks, E experts, T = max tokens per rank, H = hidden):
//   sync          [R] words        clean barrier: epoch each peer reached
//   sync_sent     [R] words        (private) the epoch this rank last told each peer (a fabric adds the
//                                  difference)
//   release       [2][R] words     buffer b: uses of it each peer has released
//   release_due   [2][R] words     (private) the release word's value each peer owes before buffer b is
//                                  used again (its value at the last clean, plus one per use it took part in)
//   arrival       [2][R] words     buffer b: operations whose counts each peer has published to this rank
//   arrival_seen  [2][R] words     (private) each arrival word's value when last taken (by the release)
//   counts        [2][R][E/R + 1]  buffer b, peer p: the counts p published here, one per local expert of
//                                  the dispatch's destination (this rank) or the combine's expert rank (p),
//                                  then p's count_block_check; plain values, valid once p's arrival for the
//                                  operation is in
//   counts_out    [2][R][E/R + 1]  (staging) the blocks this rank puts to peers on other nodes
//   send[b]   dispatch staging [E][T] messages (rows bound for other nodes, put as one block per expert)
//             plus one scratch message per token; combine staging [E/R][R*T] bf16 rows (the zero-copy
//             buffer)
//   recv[b]   dispatch slots [E/R][R][T] messages; combine slots [E][T] bf16 rows
// Words are 8 bytes and come first, so every signal offset fits the proxy's 32-bit field. The word areas
// depend only on R; the count blocks on R and E; the buffers on the whole shape (changing it needs
// clean_low_latency_buffer).
//
// A word (sync, release, arrival) has one writer, the peer it is indexed by, and only grows: across nodes by
// the fabric's atomic add, within a node by its writer storing its last value plus the delta. Nothing else
// writes it (a fabric may keep the value itself, as the GPU's device_copy fabric does), so a reader keeps
// what it last read in a private word and a delta is the difference; clean_low_latency_buffer re-reads every
// word into its private copy instead of clearing anything. An arrival's delta and every count carry a tag
// that names the operation: (tag << 20) | (count + 1) (an arrival: count 0), tag = ((operation & 1023) << 1)
// | (combine ? 1 : 0), so a word or count from another operation or kind is caught instead of read as a
// count. A buffer carries one operation at a time (the next use waits for the release), so one arrival array
// serves dispatch and combine: the release takes the delta of every peer it read from.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ferry/kernels/protocol/hd.hpp"
#include "ferry/kernels/protocol/numeric.hpp"

namespace ferry::kernels::protocol {

inline constexpr int kLowLatencyBuffers = 2;
inline constexpr std::size_t kLowLatencyWordBytes = 8;
inline constexpr std::size_t kLowLatencyHeaderBytes = 16;
inline constexpr int kLowLatencyCountBits = 20;
// Counts travel as count + 1 in 20 bits.
inline constexpr std::int64_t kLowLatencyMaxTokens = (std::int64_t{1} << kLowLatencyCountBits) - 2;

struct LowLatencyShape {
  std::int64_t max_tokens = 0;  // num_max_dispatch_tokens_per_rank
  std::int64_t hidden = 0;
  int num_ranks = 0;
  std::int64_t num_experts = 0;

  FERRY_HD std::int64_t local_experts() const { return num_experts / num_ranks; }
  FERRY_HD std::int64_t rows_per_expert() const { return num_ranks * max_tokens; }
  FERRY_HD bool operator==(const LowLatencyShape& other) const {
    return max_tokens == other.max_tokens && hidden == other.hidden && num_ranks == other.num_ranks &&
           num_experts == other.num_experts;
  }
};

// What one dispatch message holds: a header, the row (fp8 e4m3 bytes or bf16), then one fp32 scale per 128
// values (fp8 only). 16-byte aligned throughout.
struct LowLatencyHeader {
  std::int32_t source_token;
  std::uint32_t tag;
  std::int32_t source_rank;
  std::uint32_t shape_check;  // low_latency_shape_check
};
static_assert(sizeof(LowLatencyHeader) == kLowLatencyHeaderBytes, "the header is part of the wire format");

struct LowLatencyMessage {
  bool fp8 = false;
  std::int64_t hidden = 0;
  std::size_t payload = kLowLatencyHeaderBytes;
  std::size_t scales = 0;  // offset of the scales (fp8)
  std::size_t stride = 0;  // bytes of one message; slots of an operation are this far apart

  FERRY_HD std::size_t row_bytes() const { return static_cast<std::size_t>(hidden) * (fp8 ? 1 : 2); }
};

FERRY_HD inline LowLatencyMessage low_latency_message(bool fp8, std::int64_t hidden) {
  LowLatencyMessage message;
  message.fp8 = fp8;
  message.hidden = hidden;
  message.scales = message.payload + message.row_bytes();
  const std::size_t scale_bytes = fp8 ? sizeof(float) * static_cast<std::size_t>(scale_blocks(hidden)) : 0;
  message.stride = align_up(message.scales + scale_bytes, 16);
  return message;
}

struct LowLatencyLayout {
  LowLatencyShape shape;
  std::size_t message_bytes = 0;  // the largest dispatch message (bf16 rows): what the slots are sized for
  std::size_t combine_row = 0;    // one bf16 row: a combine slot
  std::size_t sync = 0;
  std::size_t sync_sent = 0;
  std::size_t release = 0;
  std::size_t release_due = 0;
  std::size_t arrival = 0;
  std::size_t arrival_seen = 0;
  std::size_t counts = 0;
  std::size_t counts_out = 0;
  std::size_t send[kLowLatencyBuffers] = {0, 0};
  std::size_t recv[kLowLatencyBuffers] = {0, 0};
  std::size_t total_bytes = 0;

  FERRY_HD std::int64_t T() const { return shape.max_tokens; }
  FERRY_HD int R() const { return shape.num_ranks; }
  FERRY_HD std::int64_t E() const { return shape.num_experts; }

  FERRY_HD std::size_t sync_word(int peer) const { return sync + kLowLatencyWordBytes * peer; }
  FERRY_HD std::size_t sync_sent_word(int peer) const { return sync_sent + kLowLatencyWordBytes * peer; }
  FERRY_HD std::size_t release_word(int buffer, int peer) const {
    return release + kLowLatencyWordBytes * (static_cast<std::size_t>(buffer) * R() + peer);
  }
  FERRY_HD std::size_t release_due_word(int buffer, int peer) const {
    return release_due + kLowLatencyWordBytes * (static_cast<std::size_t>(buffer) * R() + peer);
  }
  FERRY_HD std::size_t arrival_word(int buffer, int peer) const {
    return arrival + kLowLatencyWordBytes * (static_cast<std::size_t>(buffer) * R() + peer);
  }
  FERRY_HD std::size_t arrival_seen_word(int buffer, int peer) const {
    return arrival_seen + kLowLatencyWordBytes * (static_cast<std::size_t>(buffer) * R() + peer);
  }
  FERRY_HD std::size_t release_words_bytes() const { return kLowLatencyWordBytes * kLowLatencyBuffers * R(); }
  // Count blocks: what `peer` published to this rank in buffer b (counts), and what this rank puts to `peer`
  // (counts_out); `local_expert` of the destination (dispatch) or of the expert rank (combine).
  FERRY_HD std::size_t count_in(int buffer, int peer, std::int64_t local_expert) const {
    return counts + kLowLatencyWordBytes * count_index(buffer, peer, local_expert);
  }
  FERRY_HD std::size_t count_out(int buffer, int peer, std::int64_t local_expert) const {
    return counts_out + kLowLatencyWordBytes * count_index(buffer, peer, local_expert);
  }
  // The block's last word (local_expert == E/R) is the check: count_block_check.
  FERRY_HD std::size_t count_block_words() const {
    return static_cast<std::size_t>(shape.local_experts()) + 1;
  }
  FERRY_HD std::size_t count_block_bytes() const { return kLowLatencyWordBytes * count_block_words(); }
  FERRY_HD std::size_t count_blocks_bytes() const {
    return count_block_bytes() * static_cast<std::size_t>(kLowLatencyBuffers * R());
  }
  FERRY_HD std::size_t count_index(int buffer, int peer, std::int64_t local_expert) const {
    return (static_cast<std::size_t>(buffer) * R() + peer) * count_block_words() +
           static_cast<std::size_t>(local_expert);
  }

  // Dispatch, with this operation's message stride.
  FERRY_HD std::size_t dispatch_staging(int buffer, std::int64_t expert, std::int64_t position,
                                        std::size_t stride) const {
    return send[buffer] + static_cast<std::size_t>(expert * T() + position) * stride;
  }
  FERRY_HD std::size_t token_scratch(int buffer, std::int64_t token, std::size_t stride) const {
    return send[buffer] + static_cast<std::size_t>(E() * T() + token) * stride;
  }
  FERRY_HD std::size_t dispatch_slot(int buffer, std::int64_t local_expert, int source, std::int64_t position,
                                     std::size_t stride) const {
    return recv[buffer] + static_cast<std::size_t>((local_expert * R() + source) * T() + position) * stride;
  }
  // Combine.
  FERRY_HD std::size_t combine_staging(int buffer, std::int64_t local_expert, std::int64_t row) const {
    return send[buffer] +
           static_cast<std::size_t>(local_expert * shape.rows_per_expert() + row) * combine_row;
  }
  FERRY_HD std::size_t combine_slot(int buffer, std::int64_t expert, std::int64_t position) const {
    return recv[buffer] + static_cast<std::size_t>(expert * T() + position) * combine_row;
  }
};

FERRY_HD inline LowLatencyLayout make_low_latency_layout(const LowLatencyShape& shape) {
  constexpr std::size_t kPage = 4096;
  LowLatencyLayout layout;
  layout.shape = shape;
  layout.message_bytes = low_latency_message(false, shape.hidden).stride;
  const std::size_t fp8_bytes = low_latency_message(true, shape.hidden).stride;
  if (fp8_bytes > layout.message_bytes) layout.message_bytes = fp8_bytes;
  layout.combine_row = align_up(static_cast<std::size_t>(shape.hidden) * 2, 16);
  const auto T = static_cast<std::size_t>(shape.max_tokens);
  const auto R = static_cast<std::size_t>(shape.num_ranks);
  const auto E = static_cast<std::size_t>(shape.num_experts);
  std::size_t offset = 0;
  layout.sync = offset;
  offset += kLowLatencyWordBytes * R;
  layout.sync_sent = offset;
  offset += kLowLatencyWordBytes * R;
  layout.release = offset;
  offset += kLowLatencyWordBytes * kLowLatencyBuffers * R;
  layout.release_due = offset;
  offset += kLowLatencyWordBytes * kLowLatencyBuffers * R;
  layout.arrival = offset;
  offset += kLowLatencyWordBytes * kLowLatencyBuffers * R;
  layout.arrival_seen = offset;
  offset += kLowLatencyWordBytes * kLowLatencyBuffers * R;
  layout.counts = align_up(offset, kPage);
  offset = layout.counts + layout.count_blocks_bytes();
  layout.counts_out = offset;
  offset += layout.count_blocks_bytes();
  const std::size_t dispatch_send = (E * T + T) * layout.message_bytes;
  const std::size_t combine_send = E * T * layout.combine_row;  // [E/R][R*T] rows
  const std::size_t send_bytes = align_up(dispatch_send > combine_send ? dispatch_send : combine_send, kPage);
  const std::size_t dispatch_recv = E * T * layout.message_bytes;  // [E/R][R][T] messages
  const std::size_t combine_recv = E * T * layout.combine_row;
  const std::size_t recv_bytes = align_up(dispatch_recv > combine_recv ? dispatch_recv : combine_recv, kPage);
  for (int b = 0; b < kLowLatencyBuffers; ++b) {
    offset = align_up(offset, kPage);
    layout.send[b] = offset;
    offset += send_bytes;
    layout.recv[b] = offset;
    offset += recv_bytes;
  }
  layout.total_bytes = align_up(offset, kPage);
  return layout;
}

// The largest single put of an operation: a dispatch block of up to T messages to one expert (a combine
// block of up to T rows is smaller). A command ring's put carries its size in 32 bits, so a shape whose
// block does not fit must be refused up front instead of cut short.
FERRY_HD inline std::uint64_t low_latency_largest_put(const LowLatencyLayout& layout) {
  return static_cast<std::uint64_t>(layout.T()) * layout.message_bytes;
}
inline constexpr std::uint64_t kLowLatencyMaxPutBytes = 0xffffffffull;

// ---- words ----

FERRY_HD inline std::uint32_t low_latency_tag(std::uint32_t operation, bool combine) {
  return ((operation & 1023u) << 1) | (combine ? 1u : 0u);
}
FERRY_HD inline std::uint64_t low_latency_signal(std::uint32_t tag, std::int64_t count) {
  return (static_cast<std::uint64_t>(tag) << kLowLatencyCountBits) | static_cast<std::uint64_t>(count + 1);
}
FERRY_HD inline std::uint32_t signal_tag(std::uint64_t word) {
  return static_cast<std::uint32_t>(word) >> kLowLatencyCountBits;
}
FERRY_HD inline std::int64_t signal_count(std::uint64_t word) {
  return static_cast<std::int64_t>(word & ((std::uint64_t{1} << kLowLatencyCountBits) - 1)) - 1;
}
// A count is a plain 64-bit value (stored, or put as part of a block; never a fabric add, which is 32-bit),
// so combine's counts within a node carry 32 more bits: where the rows begin in the sender's staging.
FERRY_HD inline std::uint64_t with_begin(std::uint64_t word, std::int64_t begin) {
  return word | (static_cast<std::uint64_t>(begin) << 32);
}
FERRY_HD inline std::int64_t signal_begin(std::uint64_t word) {
  return static_cast<std::int64_t>(word >> 32);
}

// What every dispatch row carries in its header's last word, checked on arrival: ranks that disagree about
// the shape or the element type place rows differently, which must fail instead of reading garbage. A count
// block ends with count_block_check for the same reason (ranks that disagree about the experts place their
// counts differently, and a word nobody wrote reads as 0).
FERRY_HD inline std::uint32_t low_latency_shape_check(const LowLatencyShape& shape, bool fp8) {
  std::uint64_t hash = 1469598103934665603ull;  // FNV-1a over the fields
  const std::uint64_t fields[5] = {static_cast<std::uint64_t>(shape.max_tokens),
                                   static_cast<std::uint64_t>(shape.hidden),
                                   static_cast<std::uint64_t>(shape.num_ranks),
                                   static_cast<std::uint64_t>(shape.num_experts), fp8 ? 1u : 0u};
  for (std::uint64_t field : fields) {
    hash ^= field;
    hash *= 1099511628211ull;
  }
  return static_cast<std::uint32_t>(hash ^ (hash >> 32));
}

FERRY_HD inline std::uint64_t count_block_check(const LowLatencyShape& shape) {
  return (std::uint64_t{0x636f756e} << 32) | low_latency_shape_check(shape, false);  // "coun" and the shape
}

// A received block of rows: where it starts in the packed output and how many rows it has.
FERRY_HD inline std::int64_t pack_range(std::int64_t begin, std::int64_t count) {
  return static_cast<std::int64_t>((static_cast<std::uint64_t>(begin) << 32) |
                                   static_cast<std::uint32_t>(count));
}
FERRY_HD inline std::int64_t range_begin(std::int64_t range) {
  return static_cast<std::int64_t>(static_cast<std::uint64_t>(range) >> 32);
}
FERRY_HD inline std::int64_t range_count(std::int64_t range) {
  return static_cast<std::int64_t>(static_cast<std::uint32_t>(range));
}

// ---- numerics (bit-identical on host and device) ----

// Products and sums rounded on their own, never fused: the host and the GPU then agree to the bit (host
// sources that use these are compiled with -ffp-contract=off).
FERRY_HD inline float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}
FERRY_HD inline float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// Selections and clamps on 32-bit lanes written as masks and min: the forms a compiler vectorises (a ternary
// between values of different widths stops GCC's vectoriser).
FERRY_HD inline std::uint32_t select_u32(bool first, std::uint32_t a, std::uint32_t b) {
  const std::uint32_t mask = 0u - static_cast<std::uint32_t>(first);
  return (a & mask) | (b & ~mask);
}
FERRY_HD inline std::uint32_t min_u32(std::uint32_t a, std::uint32_t b) {
  return a < b ? a : b;
}
FERRY_HD inline std::uint32_t max_u32(std::uint32_t a, std::uint32_t b) {
  return a > b ? a : b;
}

// float -> e4m3 (fn), round to nearest even, saturating to +-448, every NaN the canonical one (numeric.hpp):
// the same bits as float_to_e4m3 without branches, so a compiler vectorises it.
FERRY_HD inline std::uint8_t float_to_e4m3_branchless(float value) {
  const std::uint32_t bits = float_bits(value);
  const std::uint32_t magnitude = bits & 0x7fffffffu;
  const std::uint32_t sign = select_u32(magnitude > 0x7f800000u, 0u, (bits >> 24) & 0x80u);
  // Normal in e4m3 (>= 2^-6): keep 3 mantissa bits, ties to even, then rebias the exponent from 127 to 7.
  const std::uint32_t normal = ((magnitude + 0x7ffffu + ((magnitude >> 20) & 1u)) >> 20) - (120u << 3);
  // Subnormal (< 2^-6): the FPU rounds |value| + 2^14 to a multiple of 2^-9, the e4m3 subnormal step.
  const std::uint32_t subnormal = float_bits(add_rn(bits_to_float(magnitude), 16384.0f)) - 0x46800000u;
  std::uint32_t result = min_u32(select_u32(magnitude < 0x3c800000u, subnormal, normal), 0x7eu);
  result = select_u32(magnitude > 0x7f800000u, kE4m3CanonicalNan, result);
  return static_cast<std::uint8_t>(sign | result);
}

// DeepEP's per-128-channel fp8 scales: amax (at least 1e-4) maps to 448; with round_scale the scale is a
// power of two (scale_inv = 2^ceil(log2(amax / 448))), which is what UE8M0 stores (its exponent byte).
inline constexpr float kFp8AmaxFloor = 1e-4f;
inline constexpr float kE4m3Max = 448.0f;
inline constexpr float kE4m3MaxInverse = 1.0f / 448.0f;

struct Fp8Scale {
  float scale;      // multiplies the values
  float scale_inv;  // travels: value = fp8 * scale_inv
};

FERRY_HD inline float pow2_float(int exponent) {
  exponent = exponent < -126 ? -126 : exponent > 127 ? 127 : exponent;
  return bits_to_float(static_cast<std::uint32_t>(exponent + 127) << 23);
}

FERRY_HD inline Fp8Scale fp8_scale(float amax, bool round_scale) {
  if (round_scale) {
    const std::uint32_t bits = float_bits(mul_rn(amax, kE4m3MaxInverse));
    const int exponent =
        static_cast<int>((bits >> 23) & 0xffu) - 127 + ((bits & 0x7fffffu) != 0 ? 1 : 0);  // log2, rounded up
    return {pow2_float(-exponent), pow2_float(exponent)};
  }
  return {kE4m3Max / amax, mul_rn(amax, kE4m3MaxInverse)};
}

// UE8M0: the exponent byte of a power-of-two scale.
FERRY_HD inline std::uint8_t ue8m0_of(float scale_inv) {
  return static_cast<std::uint8_t>(float_bits(scale_inv) >> 23);
}

// The largest |value| of a bf16 block as bf16 bits, NaNs left out (as fmaxf does); integer compares give the
// same order as float ones for non-negative values, and vectorise.
FERRY_HD inline std::uint16_t bf16_abs_bits_max(const std::uint16_t* values, int n) {
  std::uint32_t best = 0;
  for (int i = 0; i < n; ++i) {
    const std::uint32_t magnitude = values[i] & 0x7fffu;
    best = max_u32(best, select_u32(magnitude > 0x7f80u, 0, magnitude));
  }
  return static_cast<std::uint16_t>(best);
}

FERRY_HD inline float block_amax(std::uint16_t abs_bits_max) {
  const float amax = bf16_to_float(abs_bits_max);
  return amax > kFp8AmaxFloor ? amax : kFp8AmaxFloor;
}

// One block of up to 128 bf16 values as e4m3 with its scale; returns scale_inv. The reference form: the
// executors' vectorised or per-thread versions produce the same bits.
FERRY_HD inline float quantize_block(const std::uint16_t* values, int n, bool round_scale,
                                     std::uint8_t* out) {
  const Fp8Scale s = fp8_scale(block_amax(bf16_abs_bits_max(values, n)), round_scale);
  for (int i = 0; i < n; ++i) out[i] = float_to_e4m3_branchless(mul_rn(bf16_to_float(values[i]), s.scale));
  return s.scale_inv;
}

// Where a (local expert, packed row, scale block) scale lands in the receive tensors. DeepEP's layout: per
// expert, the scales are stored transposed ([blocks][rows]) so that a row's scales are a column; UE8M0 packs
// four blocks' bytes in one 32-bit word ([blocks / 4][rows][4] bytes).
FERRY_HD inline std::size_t scale_index(std::int64_t local_expert, std::int64_t row, std::int64_t block,
                                        std::int64_t rows_per_expert, std::int64_t blocks) {
  return static_cast<std::size_t>((local_expert * blocks + block) * rows_per_expert + row);
}
FERRY_HD inline std::int64_t ue8m0_packs(std::int64_t blocks) {
  return (blocks + 3) / 4;
}
FERRY_HD inline std::size_t ue8m0_index(std::int64_t local_expert, std::int64_t row, std::int64_t block,
                                        std::int64_t rows_per_expert, std::int64_t blocks) {
  const std::int64_t packs = ue8m0_packs(blocks);
  return static_cast<std::size_t>(((local_expert * packs + block / 4) * rows_per_expert + row) * 4 +
                                  block % 4);
}

}  // namespace ferry::kernels::protocol
