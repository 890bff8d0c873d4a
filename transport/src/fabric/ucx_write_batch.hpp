// Writes to one peer that travel as one UCX active message (the ucx fabric's batching, ucx_fabric.hpp).
//
// Over tcp, UCX 1.13 emulates every put and atomic with an active message of its own and answers each put
// with a completion message: a low-latency dispatch of 8 tokens cost a rank about 67 sendto calls, each a
// few microseconds of a shared core. A batch carries many puts and signal adds to one peer in one message,
// and the target applies them in the order they were written, so a signal still lands after the payload
// it follows.
//
// Wire format (host byte order: both ends are the same build on the same kind of machine):
//   BatchHeader, then BatchEntry[header.entries], then the payload of every put entry, in entry order.
// The target checks everything against its own regions before writing a byte: a batch that is not one,
// or that writes outside a region, is refused whole with a message that says what is wrong.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <type_traits>

namespace ferry::transport::write_batch {

inline constexpr std::uint16_t kActiveMessageId = 0x4642;  // "FB"
inline constexpr std::uint32_t kMagic = 0x31544246;        // "FBT1"

enum class EntryKind : std::uint32_t { put = 1, add = 2 };

struct BatchHeader {
  std::uint32_t magic = kMagic;
  std::uint32_t sender = 0;   // the sending rank, for messages
  std::uint32_t entries = 0;  // BatchEntry records that follow
  std::uint32_t reserved = 0;
  std::uint64_t payload_bytes = 0;  // sum of the put entries' sizes
};

struct BatchEntry {
  std::uint32_t kind = 0;    // EntryKind
  std::uint32_t region = 0;  // the target's region
  std::uint64_t offset = 0;  // within it (8-byte aligned for add)
  std::uint64_t value = 0;   // put: bytes that follow in the payload; add: the 64-bit addend
};

static_assert(sizeof(BatchHeader) == 24 && std::is_trivially_copyable_v<BatchHeader>);
static_assert(sizeof(BatchEntry) == 24 && std::is_trivially_copyable_v<BatchEntry>);

// One of the target's registered regions.
struct TargetRegion {
  std::byte* base = nullptr;
  std::size_t bytes = 0;
  bool host = true;  // a batch writes with memcpy: device memory is refused
};

// Applies a received batch to `regions`: every put's bytes and every add (a release fetch_add on the
// 64-bit word), in entry order. Returns "" when applied, else what is wrong with it (nothing was written).
// `world_size` bounds the sender field.
std::string apply(const std::byte* message, std::size_t length, std::span<const TargetRegion> regions,
                  int world_size);

}  // namespace ferry::transport::write_batch
