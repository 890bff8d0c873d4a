// Shared by the store tests: options for a loopback server, a raw-socket client that speaks the documented
// wire format by hand (independently of the library's encoder), and ranks as threads.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "bootstrap/store_auth.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/store.hpp"

namespace store_test {

using namespace std::chrono_literals;
using ferry::Clock;
using ferry::Errc;
using ferry::transport::Bytes;
using ferry::transport::Store;
using ferry::transport::StoreOptions;
using ferry::transport::StoreServer;

// Generous slack for a loaded 2-core CI machine (and sanitizers) on top of a deadline.
constexpr auto kSlack = 2s;

inline StoreOptions server_options(std::chrono::milliseconds timeout = 5000ms) {
  StoreOptions options;
  options.host = "127.0.0.1";
  options.port = 0;
  options.secret = "job-secret-1234";
  options.timeout = timeout;
  return options;
}

inline StoreOptions client_options(const StoreServer& server, std::chrono::milliseconds timeout = 5000ms) {
  StoreOptions options = server_options(timeout);
  options.port = server.port();
  return options;
}

inline Bytes bytes_of(const std::string& text) {
  return Bytes(text.begin(), text.end());
}

// Runs `body`, which must throw ferry::Error, and returns that error.
template <typename Body>
ferry::Error expect_error(Body&& body) {
  try {
    body();
  } catch (const ferry::Error& error) {
    return error;
  }
  FAIL("expected a ferry::Error");
  throw std::logic_error("unreachable");
}

inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

inline std::uint32_t test_seed() {
  if (const char* fixed = std::getenv("FERRY_TEST_SEED"))
    return static_cast<std::uint32_t>(std::strtoul(fixed, nullptr, 10));
  return std::random_device{}();
}

// ---- raw wire helpers: an independent encoder for the documented format ----

enum : std::uint16_t {
  kHello = 1,
  kSet = 2,
  kGet = 3,
  kCheck = 4,
  kAdd = 5,
  kProve = 8,
  kJoin = 9,
  kLeave = 10,
  kMembers = 11,
  kFail = 12,
  kWatch = 13,
  kOk = 0x80,
  kValue = 0x81,
  kTimeout = 0x82,
  kError = 0x83,
  kChallenge = 0x84,
};
constexpr std::uint32_t kMagic = 0x59525246;
constexpr std::uint16_t kVersion = 3;

inline void put_le(Bytes& out, std::uint64_t value, int width) {
  for (int i = 0; i < width; ++i) out.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
}

inline Bytes raw_header(std::uint16_t opcode, std::uint32_t key_len, std::uint64_t value_len,
                        std::uint32_t magic = kMagic, std::uint16_t version = kVersion) {
  Bytes out;
  put_le(out, magic, 4);
  put_le(out, version, 2);
  put_le(out, opcode, 2);
  put_le(out, key_len, 4);
  put_le(out, value_len, 8);
  return out;
}

inline Bytes raw_frame(std::uint16_t opcode, const std::string& key, const Bytes& value) {
  Bytes out = raw_header(opcode, static_cast<std::uint32_t>(key.size()), value.size());
  out.insert(out.end(), key.begin(), key.end());
  out.insert(out.end(), value.begin(), value.end());
  return out;
}

class RawClient {
 public:
  // `source`: the local address to connect from (any of 127.0.0.0/8 works on loopback), so that a test can
  // play a different host.
  explicit RawClient(std::uint16_t port, const char* source = nullptr) {
    fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    if (source != nullptr) {
      sockaddr_in local{};
      local.sin_family = AF_INET;
      REQUIRE(::inet_pton(AF_INET, source, &local.sin_addr) == 1);
      REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&local), sizeof(local)) == 0);
    }
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(::connect(fd_, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0);
  }
  ~RawClient() { ::close(fd_); }
  RawClient(const RawClient&) = delete;
  RawClient& operator=(const RawClient&) = delete;

  // Best effort: the server may already have closed the connection.
  void send(const Bytes& bytes) {
    sent.insert(sent.end(), bytes.begin(), bytes.end());
    std::size_t done = 0;
    while (done < bytes.size()) {
      ssize_t sent = ::send(fd_, bytes.data() + done, bytes.size() - done, MSG_NOSIGNAL);
      if (sent <= 0) return;
      done += static_cast<std::size_t>(sent);
    }
  }
  // The challenge-response of store_auth.hpp, by hand: HELLO with a nonce, PROVE with the HMAC. The frames
  // this client sent are kept in `sent`, for replay tests.
  void hello(const std::string& secret = "job-secret-1234") { REQUIRE(try_hello(secret) == kOk); }
  // The same, returning the opcode of the answer to PROVE (kOk, or kError for a wrong secret).
  std::uint16_t try_hello(const std::string& secret) {
    using namespace ferry::transport;
    const auth::Nonce client = auth::random_nonce();
    send(raw_frame(kHello, "", Bytes(client.begin(), client.end())));
    auto challenge = read_frame();
    REQUIRE(challenge.has_value());
    REQUIRE(challenge->opcode == kChallenge);
    REQUIRE(challenge->value.size() == auth::kNonceBytes);
    auth::Nonce server{};
    std::copy(challenge->value.begin(), challenge->value.end(), server.begin());
    const crypto::Digest proof = auth::client_proof(secret, client, server);
    send(raw_frame(kProve, "", Bytes(proof.begin(), proof.end())));
    auto reply = read_frame();
    REQUIRE(reply.has_value());
    if (reply->opcode == kOk) {
      const crypto::Digest expected = auth::server_proof(secret, client, server);
      REQUIRE(reply->value == Bytes(expected.begin(), expected.end()));
    }
    return reply->opcode;
  }

  struct Frame {
    std::uint16_t opcode = 0;
    std::string key;
    Bytes value;
  };
  // Reads one frame, or nullopt when the connection closed (or nothing came within `timeout`).
  std::optional<Frame> read_frame(std::chrono::milliseconds timeout = 3000ms) {
    Bytes header(20);
    if (!read_exact(header.data(), header.size(), timeout)) return std::nullopt;
    auto le = [&](int offset, int width) {
      std::uint64_t value = 0;
      for (int i = 0; i < width; ++i) value |= std::uint64_t{header[offset + i]} << (8 * i);
      return value;
    };
    REQUIRE(le(0, 4) == kMagic);
    Frame frame;
    frame.opcode = static_cast<std::uint16_t>(le(6, 2));
    frame.key.resize(le(8, 4));
    frame.value.resize(le(12, 8));
    if (!read_exact(reinterpret_cast<std::uint8_t*>(frame.key.data()), frame.key.size(), timeout))
      return std::nullopt;
    if (!read_exact(frame.value.data(), frame.value.size(), timeout)) return std::nullopt;
    return frame;
  }
  // True when the server closes this connection within `timeout` (any pending frames are skipped).
  bool closed_by_server(std::chrono::milliseconds timeout = 3000ms) {
    auto deadline = Clock::now() + timeout;
    std::uint8_t sink[4096];
    while (Clock::now() < deadline) {
      pollfd entry{fd_, POLLIN, 0};
      if (::poll(&entry, 1, 50) <= 0) continue;
      ssize_t got = ::recv(fd_, sink, sizeof(sink), 0);
      if (got <= 0) return true;
    }
    return false;
  }

  Bytes sent;  // every byte this client sent

 private:
  bool read_exact(std::uint8_t* out, std::size_t size, std::chrono::milliseconds timeout) {
    auto deadline = Clock::now() + timeout;
    while (size > 0) {
      if (Clock::now() >= deadline) return false;
      pollfd entry{fd_, POLLIN, 0};
      if (::poll(&entry, 1, 50) <= 0) continue;
      ssize_t got = ::recv(fd_, out, size, 0);
      if (got <= 0) return false;
      out += got;
      size -= static_cast<std::size_t>(got);
    }
    return true;
  }
  int fd_ = -1;
};

// A fresh authenticated client must still get prompt service.
inline void require_server_healthy(const StoreServer& server, const std::string& tag) {
  INFO("after: " << tag);
  auto start = Clock::now();
  Store good(client_options(server));
  good.set("health/" + tag, bytes_of(tag));
  REQUIRE(good.get("health/" + tag) == bytes_of(tag));
  REQUIRE(seconds_since(start) < 1.0);
}

// Runs `world` threads, each with its own Store, and returns what each body returned or the error it threw.
struct RankOutcome {
  bool ok = false;
  Errc code = Errc::internal;
  std::string error;
  double seconds = 0;
};

template <typename Body>
std::vector<RankOutcome> run_ranks(const StoreServer& server, const std::vector<int>& ranks, Body body,
                                   std::chrono::milliseconds timeout = 5000ms) {
  std::vector<RankOutcome> outcomes(ranks.size());
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < ranks.size(); ++i) {
    threads.emplace_back([&, i] {
      auto start = Clock::now();
      try {
        Store store(client_options(server, timeout));
        body(store, ranks[i]);
        outcomes[i].ok = true;
      } catch (const ferry::Error& error) {
        outcomes[i].code = error.code();
        outcomes[i].error = error.what();
      } catch (const std::exception& error) {
        outcomes[i].error = error.what();
      }
      outcomes[i].seconds = seconds_since(start);
    });
  }
  for (auto& thread : threads) thread.join();
  return outcomes;
}

}  // namespace store_test
