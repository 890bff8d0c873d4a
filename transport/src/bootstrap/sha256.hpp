// SHA-256 (FIPS 180-4) and HMAC-SHA256 (RFC 2104), for the store's challenge-response: the job secret never
// travels, only an HMAC of fresh nonces under it. Small and dependency-free (no OpenSSL in ferry's build);
// checked against the FIPS 180-4 examples and the RFC 4231 test cases (tests/unit/test_store_auth.cpp).
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>

namespace ferry::transport::crypto {

inline constexpr std::size_t kSha256Bytes = 32;
using Digest = std::array<std::uint8_t, kSha256Bytes>;

class Sha256 {
 public:
  Sha256();
  void update(const void* data, std::size_t size);
  void update(std::string_view text) { update(text.data(), text.size()); }
  Digest finish();  // the object must not be updated again afterwards

 private:
  void compress(const std::uint8_t* block);

  std::array<std::uint32_t, 8> state_;
  std::array<std::uint8_t, 64> block_{};
  std::size_t block_used_ = 0;
  std::uint64_t total_bytes_ = 0;
};

Digest sha256(const void* data, std::size_t size);

// HMAC-SHA256 over the concatenation of `parts` (so callers need not build one buffer of nonces and labels).
Digest hmac_sha256(std::string_view key, std::initializer_list<std::string_view> parts);

// Equality whose time does not depend on where the inputs differ (nor, beyond the longer length, on how long
// they are): for secrets and proofs.
bool constant_time_equal(std::string_view a, std::string_view b);

inline std::string_view view(const Digest& digest) {
  return {reinterpret_cast<const char*>(digest.data()), digest.size()};
}

}  // namespace ferry::transport::crypto
