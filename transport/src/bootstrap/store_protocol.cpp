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
    case Opcode::ok:
      return "OK";
    case Opcode::value:
      return "VALUE";
    case Opcode::timeout:
      return "TIMEOUT";
    case Opcode::error:
      return "ERROR";
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
    fail(Errc::protocol, "unsupported protocol version " + std::to_string(version) + " (this build speaks " +
                             std::to_string(kVersion) + ": mixed ferry versions in one job?)");
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
                         bool authenticated) {
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
  if (!authenticated) {
    if (opcode != Opcode::hello) return reject(std::string(opcode_name(opcode)) + " frame before HELLO");
    if (scan.header.value_len > kMaxHelloValueBytes) {
      return reject("HELLO secret of " + std::to_string(scan.header.value_len) + " bytes exceeds " +
                    std::to_string(kMaxHelloValueBytes));
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

bool constant_time_equal(std::string_view a, std::string_view b) {
  // Walk the longer length whatever the contents; fold every difference (and the length mismatch) into one
  // accumulator so neither an early exit nor a branch depends on secret bytes.
  std::size_t length = a.size() > b.size() ? a.size() : b.size();
  volatile unsigned char difference = a.size() == b.size() ? 0 : 1;
  for (std::size_t i = 0; i < length; ++i) {
    unsigned char x = i < a.size() ? static_cast<unsigned char>(a[i]) : 0;
    unsigned char y = i < b.size() ? static_cast<unsigned char>(b[i]) : 0;
    difference = difference | static_cast<unsigned char>(x ^ y);
  }
  return difference == 0;
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
  std::string text = error.what();
  std::string prefix = "ferry: " + std::string(to_string(error.code())) + ": ";
  return text.rfind(prefix, 0) == 0 ? text.substr(prefix.size()) : text;
}

}  // namespace ferry::transport::wire
