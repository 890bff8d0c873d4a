#include "bootstrap/store_auth.hpp"

#include <sys/random.h>

#include <cerrno>

#include "ferry/core/error.hpp"

namespace ferry::transport::auth {
namespace {

// The protocol version is part of each label: a proof made for one version never passes in another.
constexpr std::string_view kClientLabel = "ferry store v3 client proof";
constexpr std::string_view kServerLabel = "ferry store v3 server proof";

}  // namespace

Nonce random_nonce() {
  Nonce nonce{};
  std::size_t have = 0;
  while (have < nonce.size()) {
    ssize_t got = ::getrandom(nonce.data() + have, nonce.size() - have, 0);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) fail_errno("getrandom for a store nonce", got < 0 ? errno : EIO);
    have += static_cast<std::size_t>(got);
  }
  return nonce;
}

crypto::Digest client_proof(std::string_view secret, const Nonce& client, const Nonce& server) {
  return crypto::hmac_sha256(secret, {kClientLabel, view(client), view(server)});
}

crypto::Digest server_proof(std::string_view secret, const Nonce& client, const Nonce& server) {
  return crypto::hmac_sha256(secret, {kServerLabel, view(client), view(server)});
}

}  // namespace ferry::transport::auth
