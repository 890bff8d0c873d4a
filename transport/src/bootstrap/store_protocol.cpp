#include "bootstrap/store_protocol.hpp"

#include <cstdio>
#include <cstring>

#include "ferry/core/error.hpp"

namespace ferry::transport::wire {
namespace {

void put_u16(std::uint8_t* out, std::uint16_t value) {
  out[0] = static_cast<std::uint8_t>(value);
  out[1] = static_cast<std::uint8_t>(value >> 8);
}
void put_u32(std::uint8_t* out, std::uint32_t value) {
  for (int i = 0; i < 4; ++i) out[i] = static_cast<std::uint8_t>(value >> (8 * i));
}
std::uint16_t get_u16(const std::uint8_t* in) {
  return static_cast<std::uint16_t>(in[0] | (in[1] << 8));
}
std::uint32_t get_u32(const std::uint8_t* in) {
  std::uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= std::uint32_t{in[i]} << (8 * i);
  return value;
}

std::string hex(std::uint64_t value) {
  char text[32];
  std::snprintf(text, sizeof(text), "0x%llx", static_cast<unsigned long long>(value));
  return text;
}

}  // namespace

std::string lost_rank_key(std::string_view group, std::uint64_t index) {
  return std::string(group) + std::string(kLostRankKeys) + std::to_string(index);
}

bool is_lost_rank_key(std::string_view key) {
  // Any group's: the group's name (a sub-group's key prefix) comes before the reserved part.
  const std::size_t at = key.rfind(kLostRankKeys);
  if (at == std::string_view::npos || (at > 0 && key[at - 1] != '/')) return false;
  const std::string_view index = key.substr(at + kLostRankKeys.size());
  if (index.empty()) return false;
  for (const char c : index) {
    if (c < '0' || c > '9') return false;
  }
  return true;
}

std::string_view opcode_name(Opcode opcode) {
  switch (opcode) {
    case Opcode::hello:
      return "HELLO";
    case Opcode::set:
      return "SET";
    case Opcode::get:
      return "GET";
    case Opcode::check:
      return "CHECK";
    case Opcode::add:
      return "ADD";
    case Opcode::erase:
      return "ERASE";
    case Opcode::stats:
      return "STATS";
    case Opcode::prove:
      return "PROVE";
    case Opcode::join:
      return "JOIN";
    case Opcode::leave:
      return "LEAVE";
    case Opcode::members:
      return "MEMBERS";
    case Opcode::fail:
      return "FAIL";
    case Opcode::watch:
      return "WATCH";
    case Opcode::ok:
      return "OK";
    case Opcode::value:
      return "VALUE";
    case Opcode::timeout:
      return "TIMEOUT";
    case Opcode::error:
      return "ERROR";
    case Opcode::challenge:
      return "CHALLENGE";
  }
  return "UNKNOWN";
}

bool is_request(Opcode opcode) {
  switch (opcode) {
    case Opcode::hello:
    case Opcode::set:
    case Opcode::get:
    case Opcode::check:
    case Opcode::add:
    case Opcode::erase:
    case Opcode::stats:
    case Opcode::prove:
    case Opcode::join:
    case Opcode::leave:
    case Opcode::members:
    case Opcode::fail:
    case Opcode::watch:
      return true;
    default:
      return false;
  }
}

void put_u64(std::uint8_t* out, std::uint64_t value) {
  for (int i = 0; i < 8; ++i) out[i] = static_cast<std::uint8_t>(value >> (8 * i));
}

std::uint64_t get_u64(const std::uint8_t* in) {
  std::uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= std::uint64_t{in[i]} << (8 * i);
  return value;
}

std::array<std::uint8_t, 8> encode_i64(std::int64_t value) {
  std::array<std::uint8_t, 8> out{};
  put_u64(out.data(), static_cast<std::uint64_t>(value));
  return out;
}

std::int64_t decode_i64(const std::uint8_t* in) {
  return static_cast<std::int64_t>(get_u64(in));
}

std::array<std::uint8_t, kHeaderBytes> encode_header(const FrameHeader& header) {
  std::array<std::uint8_t, kHeaderBytes> out{};
  put_u32(out.data(), kMagic);
  put_u16(out.data() + 4, kVersion);
  put_u16(out.data() + 6, static_cast<std::uint16_t>(header.opcode));
  put_u32(out.data() + 8, header.key_len);
  put_u64(out.data() + 12, header.value_len);
  return out;
}

FrameHeader decode_header(const std::uint8_t* bytes, std::size_t max_value_bytes) {
  std::uint32_t magic = get_u32(bytes);
  if (magic != kMagic) {
    fail(Errc::protocol,
         "bad magic " + hex(magic) + " (expected " + hex(kMagic) + ": not a ferry store peer?)");
  }
  std::uint16_t version = get_u16(bytes + 4);
  if (version != kVersion) {
    fail(Errc::protocol, "store protocol version " + std::to_string(version) +
                             " from the other end, but this ferry speaks version " +
                             std::to_string(kVersion) + ": mixed ferry versions in one job?");
  }
  FrameHeader header;
  std::uint16_t opcode = get_u16(bytes + 6);
  header.opcode = static_cast<Opcode>(opcode);
  if (opcode_name(header.opcode) == "UNKNOWN") fail(Errc::protocol, "unknown opcode " + hex(opcode));
  header.key_len = get_u32(bytes + 8);
  if (header.key_len > kMaxKeyBytes) {
    fail(Errc::protocol, "key of " + std::to_string(header.key_len) + " bytes exceeds the limit of " +
                             std::to_string(kMaxKeyBytes));
  }
  header.value_len = get_u64(bytes + 12);
  if (header.value_len > max_value_bytes) {
    fail(Errc::protocol, "value of " + std::to_string(header.value_len) +
                             " bytes exceeds max_message_bytes " + std::to_string(max_value_bytes));
  }
  return header;
}

RequestScan scan_request(const std::uint8_t* data, std::size_t available, std::size_t max_value_bytes,
                         AuthStage stage) {
  RequestScan scan;
  if (available < kHeaderBytes) return scan;
  auto reject = [&scan](std::string reason) {
    scan.status = RequestScan::Status::rejected;
    scan.reason = std::move(reason);
    return scan;
  };
  try {
    scan.header = decode_header(data, max_value_bytes);
  } catch (const Error& error) {
    return reject(bare_message(error));
  }
  const Opcode opcode = scan.header.opcode;
  if (!is_request(opcode))
    return reject("a client sent the reply opcode " + std::string(opcode_name(opcode)));
  if (stage != AuthStage::done) {
    const Opcode expected = stage == AuthStage::hello ? Opcode::hello : Opcode::prove;
    if (opcode != expected) {
      return reject(std::string(opcode_name(opcode)) + " frame where authentication expects " +
                    std::string(opcode_name(expected)));
    }
    if (scan.header.key_len != 0 || scan.header.value_len > kMaxHelloValueBytes) {
      return reject(std::string(opcode_name(opcode)) + " with a key of " +
                    std::to_string(scan.header.key_len) + " bytes and a value of " +
                    std::to_string(scan.header.value_len) +
                    " (authentication frames carry no key and at most " +
                    std::to_string(kMaxHelloValueBytes) + " value bytes)");
    }
  }
  if (available >= scan.header.frame_bytes()) scan.status = RequestScan::Status::complete;
  return scan;
}

Bytes encode_frame(Opcode opcode, std::string_view key, const std::uint8_t* value, std::size_t value_len) {
  FrameHeader header{opcode, static_cast<std::uint32_t>(key.size()), value_len};
  Bytes frame(header.frame_bytes());
  auto encoded = encode_header(header);
  std::memcpy(frame.data(), encoded.data(), encoded.size());
  if (!key.empty()) std::memcpy(frame.data() + kHeaderBytes, key.data(), key.size());
  if (value_len > 0) std::memcpy(frame.data() + kHeaderBytes + key.size(), value, value_len);
  return frame;
}

std::string describe_duration(Duration duration) {
  using namespace std::chrono;
  auto ms = duration_cast<milliseconds>(duration).count();
  if (ms < 1000) return std::to_string(ms) + " ms";
  std::string text = std::to_string(ms / 1000);
  if (ms % 1000 != 0) {
    std::string fraction = std::to_string(1000 + ms % 1000).substr(1);  // three digits, zero padded
    while (fraction.back() == '0') fraction.pop_back();
    text += "." + fraction;
  }
  return text + " s";
}

std::string bare_message(const Error& error) {
  return error.message();
}

}  // namespace ferry::transport::wire
