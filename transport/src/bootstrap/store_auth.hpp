// The store's challenge-response (wire format: store_protocol.hpp). Neither side ever sends the job secret:
//
//   client -> HELLO(client nonce Nc)
//   server -> CHALLENGE(server nonce Ns)
//   client -> PROVE(HMAC-SHA256(secret, "ferry store v3 client proof" | Nc | Ns))
//   server -> OK(HMAC-SHA256(secret, "ferry store v3 server proof" | Nc | Ns))   or ERROR("secret")
//
// Both nonces are fresh random 128-bit values, so a recorded exchange proves nothing in another one (no
// replay), and sniffing one yields no secret. The client proves first: a stranger who connects gets nothing
// computed from the secret to test guesses against. The client then checks the server's proof, so a process
// that took the store's port without the secret is found out before the client sends it anything. Proofs
// are compared in constant time. The labels differ, so one side's proof is never the other's.
#pragma once

#include <array>
#include <cstdint>
#include <string_view>

#include "bootstrap/sha256.hpp"

namespace ferry::transport::auth {

inline constexpr std::size_t kNonceBytes = 16;
using Nonce = std::array<std::uint8_t, kNonceBytes>;

// From the kernel's random source (getrandom); throws Errc::system when it fails.
Nonce random_nonce();

crypto::Digest client_proof(std::string_view secret, const Nonce& client, const Nonce& server);
crypto::Digest server_proof(std::string_view secret, const Nonce& client, const Nonce& server);

inline std::string_view view(const Nonce& nonce) {
  return {reinterpret_cast<const char*>(nonce.data()), nonce.size()};
}

}  // namespace ferry::transport::auth
