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
// Authentication comes first, and nothing else is accepted before it ends (store_auth.hpp). The secret never
// travels: the client proves it knows it, then the server does, each with an HMAC of both sides' fresh
// nonces.
//   HELLO  value = client nonce (16 bytes)          -> CHALLENGE(value = server nonce, 16 bytes)
//   PROVE  value = the client's proof (32 bytes)    -> OK(value = the server's proof, 32 bytes) |
//   ERROR("secret")
// Then (a reply echoes the request's key so a desynchronized stream is detected):
//   SET    key, value                               -> OK
//   GET    key, value = u64 wait budget in ms        -> VALUE(value) | TIMEOUT(value = text) |
//   ERROR("failed") CHECK  key                                      -> VALUE(1 byte: 0 absent, 1 present) ADD
//   key, value = i64 delta                   -> VALUE(i64 new total) | ERROR(key "semantic") ERASE  key = a
//   non-empty prefix                 -> VALUE(u64 keys removed) STATS  (no key, no value) -> VALUE(StoreStats
//   as 5 u64: keys, bytes, connections,
//                                                       failed authentications, dropped strangers)
// Membership and the job's failure (store_members.hpp):
//   JOIN   key = group, value = u32 rank, u32 world size, then a label ("pid 12 on node0")
//                                                   -> OK | ERROR("member": rank claimed twice, world sizes
//                                                       disagree) | ERROR("failed")
//   LEAVE  key = group                              -> OK (this connection's rank checked out)
//   MEMBERS key = group                             -> VALUE(u64 ranks joined that neither left nor were
//   lost,
//                                                       u8 1 when the job has failed)
//   FAIL   value = text                             -> OK (the first text becomes the job's failure)
//   WATCH  value = u64 wait budget in ms             -> VALUE(the job's failure) as soon as there is one |
//   TIMEOUT
// Once the job has failed, a GET that would wait is answered ERROR("failed", the failure) at once, and so are
// the GETs parked at that moment: no rank waits for another that will never come. A connection that joined
// and closes without LEAVE (its process died) makes the job fail, naming the rank.
// ERROR carries a short kind in the key ("secret", "protocol", "limit", "semantic", "member", "failed") and a
// text in the value. The server processes one connection's requests in order and answers each before reading
// the next.
//
// Version 2 added ERASE and STATS; version 3 replaced the secret in clear (a recorded HELLO replayed) with
// the challenge-response and added membership. Peers of different versions fail at the first HELLO with an
// error that names both versions.
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
inline constexpr std::uint16_t kVersion = 3;
inline constexpr std::size_t kHeaderBytes = 20;
inline constexpr std::uint32_t kMaxKeyBytes = 4096;
// An unauthenticated peer may not make the server buffer more than this, whatever max_message_bytes says.
inline constexpr std::size_t kMaxHelloValueBytes = 64;
// FAIL texts and JOIN labels are cut to this many bytes.
inline constexpr std::size_t kMaxFailureBytes = 4096;
inline constexpr std::size_t kStatsFields = 5;

enum class Opcode : std::uint16_t {
  hello = 1,
  set = 2,
  get = 3,
  check = 4,
  add = 5,
  erase = 6,
  stats = 7,
  prove = 8,
  join = 9,
  leave = 10,
  members = 11,
  fail = 12,
  watch = 13,
  ok = 0x80,
  value = 0x81,
  timeout = 0x82,
  error = 0x83,
  challenge = 0x84,
};

// How far a connection is through authentication.
enum class AuthStage : std::uint8_t {
  hello,  // expects HELLO
  prove,  // CHALLENGE sent, expects PROVE
  done,   // authenticated
};

// Kinds carried in the key of an ERROR reply.
inline constexpr std::string_view kErrorSecret = "secret";
inline constexpr std::string_view kErrorProtocol = "protocol";
inline constexpr std::string_view kErrorLimit = "limit";
inline constexpr std::string_view kErrorSemantic = "semantic";
inline constexpr std::string_view kErrorMember = "member";
inline constexpr std::string_view kErrorFailed = "failed";

struct FrameHeader {
  Opcode opcode = Opcode::ok;
  std::uint32_t key_len = 0;
  std::uint64_t value_len = 0;

  std::size_t frame_bytes() const { return kHeaderBytes + key_len + static_cast<std::size_t>(value_len); }
};

// Where the store publishes the ranks it counted lost (a member whose connection closed before it left):
// the `index`-th lost rank of `group` (from 1) under lost_rank_key(group, index), its number in decimal. A
// client follows them with GETs, which for these keys park even after the job failed (StoreWatch does). No
// client may write them, and ERASE leaves them (a watch that has not read one yet would wait for it for
// good). A group's name (a sub-group's key prefix) ends with '/', so they start the key or follow a '/'.
inline constexpr std::string_view kLostRankKeys = "ferry/store/lost/";
std::string lost_rank_key(std::string_view group, std::uint64_t index);
bool is_lost_rank_key(std::string_view key);

std::string_view opcode_name(Opcode opcode);
bool is_request(Opcode opcode);

std::array<std::uint8_t, kHeaderBytes> encode_header(const FrameHeader& header);

// Decodes and validates a header. Throws Errc::protocol with a named reason for a bad magic, a bad version,
// an unknown opcode, a key over kMaxKeyBytes or a value over `max_value_bytes`.
FrameHeader decode_header(const std::uint8_t* bytes, std::size_t max_value_bytes);

// The server's look at the front of a client's byte stream: a complete request it may handle, not enough
// bytes yet, or a reason to drop the connection (a bad header, a reply opcode, and before authentication ends
// anything but the step `stage` expects, without a key and with at most kMaxHelloValueBytes). A bad header is
// rejected as soon as its 20 bytes are in, before any payload is buffered.
struct RequestScan {
  enum class Status { need_more, complete, rejected };
  Status status = Status::need_more;
  FrameHeader header;  // complete: the frame is header.frame_bytes() long
  std::string reason;  // rejected
};
RequestScan scan_request(const std::uint8_t* data, std::size_t available, std::size_t max_value_bytes,
                         AuthStage stage);

// A whole frame (header, key, value) in one buffer, ready to send.
Bytes encode_frame(Opcode opcode, std::string_view key, const std::uint8_t* value, std::size_t value_len);
inline Bytes encode_frame(Opcode opcode, std::string_view key, std::string_view value = {}) {
  return encode_frame(opcode, key, reinterpret_cast<const std::uint8_t*>(value.data()), value.size());
}

void put_u64(std::uint8_t* out, std::uint64_t value);
std::uint64_t get_u64(const std::uint8_t* in);
std::array<std::uint8_t, 8> encode_i64(std::int64_t value);
std::int64_t decode_i64(const std::uint8_t* in);

// "300 ms", "2 s", "1.5 s": for messages that say how long something waited.
std::string describe_duration(Duration duration);

// An Error's message without the "ferry: <category>: " prefix that Error::what() adds, for re-wrapping.
std::string bare_message(const Error& error);

}  // namespace ferry::transport::wire
