// Wire format of the bootstrap store.
//
// Every message, in both directions, is one frame: a fixed 20-byte header followed by `key_len` key bytes and
// `value_len` value bytes. All integers are little-endian and encoded byte by byte, so the format does not
// depend on the host's endianness or struct padding.
//
//   offset 0  u32 magic      kMagic ("FRRY" in memory order)
//   offset 4  u16 version    kVersion
//   offset 6  u16 opcode     Opcode
//   offset 8  u32 key_len    <= kMaxKeyBytes
//   offset 12 u64 value_len  <= the receiver's max_message_bytes
//
// Requests and their replies (a reply echoes the request's key so a desynchronized stream is detected):
//   HELLO  value = job secret                       -> OK | ERROR(key "secret")
//   SET    key, value                               -> OK
//   GET    key, value = u64 wait budget in ms        -> VALUE(value) | TIMEOUT(value = text)
//   CHECK  key                                      -> VALUE(1 byte: 0 absent, 1 present)
//   ADD    key, value = i64 delta                   -> VALUE(i64 new total) | ERROR(key "semantic")
//   ERASE  key = a non-empty prefix                 -> VALUE(u64 keys removed)
//   STATS  (no key, no value)                       -> VALUE(StoreStats as 5 u64: keys, bytes, connections,
//                                                       failed HELLOs, refused connections)
// ERROR carries a short kind in the key ("secret", "protocol", "limit", "semantic") and a text in the value.
// The server processes one connection's requests in order and answers each before reading the next.
//
// Version 2 added ERASE and STATS (collectives delete their rounds with ERASE, so a version-1 peer would not
// understand a version-2 one): a mixed job fails at its first HELLO, naming both versions.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/store.hpp"

namespace ferry::transport::wire {

inline constexpr std::uint32_t kMagic = 0x59525246;  // bytes 'F' 'R' 'R' 'Y' on the wire
inline constexpr std::uint16_t kVersion = 2;
inline constexpr std::size_t kHeaderBytes = 20;
inline constexpr std::uint32_t kMaxKeyBytes = 4096;
// An unauthenticated peer may not make the server buffer more than this, whatever max_message_bytes says.
inline constexpr std::size_t kMaxHelloValueBytes = 4096;
inline constexpr std::size_t kStatsFields = 5;

enum class Opcode : std::uint16_t {
  hello = 1,
  set = 2,
  get = 3,
  check = 4,
  add = 5,
  erase = 6,
  stats = 7,
  ok = 0x80,
  value = 0x81,
  timeout = 0x82,
  error = 0x83,
};

// Kinds carried in the key of an ERROR reply.
inline constexpr std::string_view kErrorSecret = "secret";
inline constexpr std::string_view kErrorProtocol = "protocol";
inline constexpr std::string_view kErrorLimit = "limit";
inline constexpr std::string_view kErrorSemantic = "semantic";

struct FrameHeader {
  Opcode opcode = Opcode::ok;
  std::uint32_t key_len = 0;
  std::uint64_t value_len = 0;

  std::size_t frame_bytes() const { return kHeaderBytes + key_len + static_cast<std::size_t>(value_len); }
};

std::string_view opcode_name(Opcode opcode);
bool is_request(Opcode opcode);

std::array<std::uint8_t, kHeaderBytes> encode_header(const FrameHeader& header);

// Decodes and validates a header. Throws Errc::protocol with a named reason for a bad magic, a bad version,
// an unknown opcode, a key over kMaxKeyBytes or a value over `max_value_bytes`.
FrameHeader decode_header(const std::uint8_t* bytes, std::size_t max_value_bytes);

// The server's look at the front of a client's byte stream: a complete request it may handle, not enough
// bytes yet, or a reason to drop the connection (a bad header, a reply opcode, and before HELLO anything but
// a HELLO of at most kMaxHelloValueBytes). A bad header is rejected as soon as its 20 bytes are in, before
// any payload is buffered.
struct RequestScan {
  enum class Status { need_more, complete, rejected };
  Status status = Status::need_more;
  FrameHeader header;  // complete: the frame is header.frame_bytes() long
  std::string reason;  // rejected
};
RequestScan scan_request(const std::uint8_t* data, std::size_t available, std::size_t max_value_bytes,
                         bool authenticated);

// A whole frame (header, key, value) in one buffer, ready to send.
Bytes encode_frame(Opcode opcode, std::string_view key, const std::uint8_t* value, std::size_t value_len);
inline Bytes encode_frame(Opcode opcode, std::string_view key, std::string_view value = {}) {
  return encode_frame(opcode, key, reinterpret_cast<const std::uint8_t*>(value.data()), value.size());
}

void put_u64(std::uint8_t* out, std::uint64_t value);
std::uint64_t get_u64(const std::uint8_t* in);
std::array<std::uint8_t, 8> encode_i64(std::int64_t value);
std::int64_t decode_i64(const std::uint8_t* in);

// Constant-time equality for the job secret: the time taken does not reveal how long a matching prefix is.
bool constant_time_equal(std::string_view a, std::string_view b);

// "300 ms", "2 s", "1.5 s": for messages that say how long something waited.
std::string describe_duration(Duration duration);

// An Error's message without the "ferry: <category>: " prefix that Error::what() adds, for re-wrapping.
std::string bare_message(const Error& error);

}  // namespace ferry::transport::wire
