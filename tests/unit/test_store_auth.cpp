// The store's challenge-response: SHA-256 and HMAC-SHA256 against their published test vectors, the secret
// never on the wire, a recorded exchange that does not replay, a server that must prove the secret too, and
// peers of another protocol version refused with both versions named.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <string>
#include <thread>

#include "bootstrap/sha256.hpp"
#include "bootstrap/store_auth.hpp"
#include "common/loopback.hpp"
#include "store_test_support.hpp"

using namespace store_test;
using namespace ferry::transport;
using ferry::transport::SecretRejected;

namespace {

std::string hex(const crypto::Digest& digest) {
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string text;
  for (std::uint8_t byte : digest) {
    text += kDigits[byte >> 4];
    text += kDigits[byte & 0xf];
  }
  return text;
}

std::string unhex(const std::string& text) {
  std::string bytes;
  for (std::size_t i = 0; i + 1 < text.size(); i += 2)
    bytes += static_cast<char>(std::stoi(text.substr(i, 2), nullptr, 16));
  return bytes;
}

std::string sha(const std::string& text) {
  return hex(crypto::sha256(text.data(), text.size()));
}

// A one-connection TCP relay between a client and the store that records what the client sends.
class RecordingRelay {
 public:
  explicit RecordingRelay(std::uint16_t store_port)
      : listener_(ferry::test::loopback_socket(true)), port_(ferry::test::port_of_socket(listener_)) {
    thread_ = std::thread([this, store_port] { run(store_port); });
  }
  ~RecordingRelay() {
    stop_ = true;
    thread_.join();
    ::close(listener_);
  }
  std::uint16_t port() const { return port_; }
  std::string recorded() {
    std::lock_guard lock(mutex_);
    return recorded_;
  }

 private:
  void run(std::uint16_t store_port) {
    pollfd wait{listener_, POLLIN, 0};
    while (!stop_ && ::poll(&wait, 1, 50) <= 0) {
    }
    if (stop_) return;
    int client = ::accept(listener_, nullptr, nullptr);
    int server = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in address{};
    address.sin_family = AF_INET;
    address.sin_port = htons(store_port);
    address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (client < 0 || ::connect(server, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0) return;
    char buffer[4096];
    while (!stop_) {
      pollfd fds[2] = {{client, POLLIN, 0}, {server, POLLIN, 0}};
      if (::poll(fds, 2, 50) <= 0) continue;
      if (fds[0].revents != 0) {
        ssize_t got = ::recv(client, buffer, sizeof(buffer), 0);
        if (got <= 0) break;
        {
          std::lock_guard lock(mutex_);
          recorded_.append(buffer, static_cast<std::size_t>(got));
        }
        if (::send(server, buffer, static_cast<std::size_t>(got), MSG_NOSIGNAL) != got) break;
      }
      if (fds[1].revents != 0) {
        ssize_t got = ::recv(server, buffer, sizeof(buffer), 0);
        if (got <= 0) break;
        if (::send(client, buffer, static_cast<std::size_t>(got), MSG_NOSIGNAL) != got) break;
      }
    }
    ::close(client);
    ::close(server);
  }

  int listener_;
  std::uint16_t port_;
  std::atomic<bool> stop_{false};
  std::mutex mutex_;
  std::string recorded_;
  std::thread thread_;
};

// A server that speaks just enough of the handshake to answer with what the test says, on one connection.
class FakeServer {
 public:
  // `version`: the header version of its replies; `proof`: what it answers PROVE with.
  FakeServer(std::uint16_t version, Bytes proof)
      : listener_(ferry::test::loopback_socket(true)), port_(ferry::test::port_of_socket(listener_)) {
    thread_ = std::thread([this, version, proof] { run(version, proof); });
  }
  ~FakeServer() {
    thread_.join();
    ::close(listener_);
  }
  std::uint16_t port() const { return port_; }

 private:
  void run(std::uint16_t version, const Bytes& proof) {
    pollfd wait{listener_, POLLIN, 0};
    if (::poll(&wait, 1, 5000) <= 0) return;
    int client = ::accept(listener_, nullptr, nullptr);
    if (client < 0) return;
    auto reply = [&](std::uint16_t opcode, const Bytes& value) {
      Bytes frame = raw_header(opcode, 0, value.size(), kMagic, version);
      frame.insert(frame.end(), value.begin(), value.end());
      (void)::send(client, frame.data(), frame.size(), MSG_NOSIGNAL);
    };
    auto skip_frame = [&] {
      std::uint8_t header[20];
      std::size_t have = 0;
      while (have < sizeof(header)) {
        ssize_t got = ::recv(client, header + have, sizeof(header) - have, 0);
        if (got <= 0) return false;
        have += static_cast<std::size_t>(got);
      }
      std::uint64_t rest = header[8] | header[9] << 8;  // key and value are short here
      rest += header[12] | header[13] << 8;
      std::uint8_t sink[256];
      while (rest > 0) {
        ssize_t got = ::recv(client, sink, std::min<std::uint64_t>(rest, sizeof(sink)), 0);
        if (got <= 0) return false;
        rest -= static_cast<std::uint64_t>(got);
      }
      return true;
    };
    if (skip_frame()) reply(kChallenge, Bytes(16, 9));
    if (version == kVersion && skip_frame()) reply(kOk, proof);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));  // let the client read before the close
    ::close(client);
  }

  int listener_;
  std::uint16_t port_;
  std::thread thread_;
};

}  // namespace

TEST_CASE("store auth: SHA-256 matches the FIPS 180-4 examples", "[store][auth]") {
  CHECK(sha("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  CHECK(sha("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  CHECK(sha("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq") ==
        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
  CHECK(sha("abcdefghbcdefghicdefghijdefghijkefghijklfghijklmghijklmnhijklmnoijklmnopjklmnopqklmnopqrlmnopqrs"
            "mnopqrstnopqrstu") == "cf5b16a778af8380036ce59e7b0492370b249b11e8f07a51afac45037afee9d1");
  CHECK(sha(std::string(1000000, 'a')) == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
  // Fed in uneven pieces, across block boundaries, the digest is the same.
  const std::string text(1000, 'x');
  crypto::Sha256 pieces;
  for (std::size_t at = 0, step = 1; at < text.size(); at += step, step = step % 97 + 7)
    pieces.update(text.data() + at, std::min(step, text.size() - at));
  CHECK(hex(pieces.finish()) == sha(text));
}

TEST_CASE("store auth: HMAC-SHA256 matches RFC 4231", "[store][auth]") {
  auto hmac = [](const std::string& key, const std::string& data) {
    return hex(crypto::hmac_sha256(key, {data}));
  };
  // Test cases 1, 2, 3, 4, 6 and 7 (5 truncates the output).
  CHECK(hmac(std::string(20, '\x0b'), "Hi There") ==
        "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  CHECK(hmac("Jefe", "what do ya want for nothing?") ==
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  CHECK(hmac(std::string(20, '\xaa'), std::string(50, '\xdd')) ==
        "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe");
  CHECK(hmac(unhex("0102030405060708090a0b0c0d0e0f10111213141516171819"), std::string(50, '\xcd')) ==
        "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b");
  CHECK(hmac(std::string(131, '\xaa'), "Test Using Larger Than Block-Size Key - Hash Key First") ==
        "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
  CHECK(hmac(std::string(131, '\xaa'),
             "This is a test using a larger than block-size key and a larger than block-size data. The key "
             "needs to be hashed before being used by the HMAC algorithm.") ==
        "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2");
  // Parts are hashed as their concatenation.
  CHECK(hex(crypto::hmac_sha256("Jefe", {"what do ya ", "want for ", "nothing?"})) ==
        hmac("Jefe", "what do ya want for nothing?"));
  CHECK(crypto::constant_time_equal("abc", "abc"));
  CHECK_FALSE(crypto::constant_time_equal("abc", "abd"));
  CHECK_FALSE(crypto::constant_time_equal("abc", "abcd"));
  CHECK_FALSE(crypto::constant_time_equal("", "a"));
}

TEST_CASE("store auth: the secret never travels, and a recorded exchange does not replay", "[store][auth]") {
  StoreServer server(server_options());
  std::string recorded;
  {
    RecordingRelay relay(server.port());
    StoreOptions options = client_options(server);
    options.port = relay.port();
    Store client(options);
    client.set("through/the/relay", bytes_of("v"));
    recorded = relay.recorded();
  }
  REQUIRE(recorded.size() > 40);
  CHECK(recorded.find("job-secret-1234") == std::string::npos);
  CHECK(recorded.find("secret") == std::string::npos);

  // Everything the client sent, replayed on a new connection: the server's new nonce makes the old proof
  // wrong, so the replay is refused and reaches nothing.
  RawClient replay(server.port());
  replay.send(Bytes(recorded.begin(), recorded.end()));
  auto challenge = replay.read_frame();
  REQUIRE(challenge.has_value());
  CHECK(challenge->opcode == kChallenge);
  auto refused = replay.read_frame();
  REQUIRE(refused.has_value());
  CHECK(refused->opcode == kError);
  CHECK(refused->key == "secret");
  CHECK(replay.closed_by_server());
  // A hand-made exchange replayed the same way fails as well.
  RawClient original(server.port());
  original.hello();
  RawClient again(server.port());
  again.send(original.sent);
  again.read_frame();
  auto verdict = again.read_frame();
  REQUIRE(verdict.has_value());
  CHECK(verdict->key == "secret");
  CHECK(server.stats().failed_hellos == 2);
}

TEST_CASE("store auth: a server that cannot prove the secret is refused by the client", "[store][auth]") {
  FakeServer impostor(kVersion, Bytes(32, 0x42));
  StoreOptions options = server_options(3000ms);
  options.port = impostor.port();
  try {
    Store client(options);
    FAIL("the client accepted a server without the secret");
  } catch (const SecretRejected& error) {
    CHECK_THAT(error.what(), Catch::Contains("could not prove it knows the job secret"));
  }
}

TEST_CASE("store auth: peers of another protocol version are refused at HELLO, naming both versions",
          "[store][auth]") {
  StoreServer server(server_options());
  // An old client: its HELLO says version 2.
  RawClient old_client(server.port());
  Bytes hello = raw_header(kHello, 0, 15, kMagic, 2);
  const std::string secret = "job-secret-1234";  // version 2 sent the secret itself
  hello.insert(hello.end(), secret.begin(), secret.end());
  old_client.send(hello);
  auto reply = old_client.read_frame();  // an ERROR in version 3 (read_frame checks only the magic)
  REQUIRE(reply.has_value());
  CHECK(reply->opcode == kError);
  const std::string text(reply->value.begin(), reply->value.end());
  CHECK_THAT(text, Catch::Contains("version 2") && Catch::Contains("speaks version 3"));
  CHECK(old_client.closed_by_server());

  // A new client at an old server: its reply's version 2 is named beside ours.
  FakeServer old_server(2, {});
  StoreOptions options = server_options(3000ms);
  options.port = old_server.port();
  auto error = expect_error([&] { Store client(options); });
  CHECK_THAT(error.what(), Catch::Contains("version 2") && Catch::Contains("speaks version 3"));
  require_server_healthy(server, "old client");
}
