// Who may talk to the store: never anyone without the job secret (an empty one included); what a stranger can
// cost is bounded (connections authenticating at once, their deadline, log lines) and never keeps the job's
// own clients out; a listening socket handed over by a launcher is served without the port ever being free.
#include <fcntl.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>

#include <mutex>
#include <vector>

#include "bootstrap/drop_log.hpp"
#include "common/loopback.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/store.hpp"
#include "store_test_support.hpp"

using namespace store_test;
using ferry::transport::SecretRejected;

using ferry::test::loopback_socket;
using ferry::test::port_of_socket;

namespace {

// The lines a server logs, instead of stderr.
class CapturedLog {
 public:
  explicit CapturedLog(StoreOptions& options) {
    options.log = [this](const std::string& line) {
      std::lock_guard lock(mutex_);
      lines_.push_back(line);
    };
  }
  std::vector<std::string> lines() {
    std::lock_guard lock(mutex_);
    return lines_;
  }

 private:
  std::mutex mutex_;
  std::vector<std::string> lines_;
};

}  // namespace

TEST_CASE("store security: a server without a secret refuses to start", "[store][security]") {
  StoreOptions options = server_options();
  options.secret = "";
  auto error = expect_error([&] { StoreServer server(options); });
  CHECK(error.code() == Errc::invalid_argument);
  CHECK_THAT(error.what(), Catch::Contains("non-empty job secret") && Catch::Contains("FERRY_SECRET"));
}

TEST_CASE("store security: a wrong or empty secret is rejected as such", "[store][security]") {
  StoreServer server(server_options());
  for (const std::string secret : {"not-the-secret", "", "job-secret-123", "job-secret-12345"}) {
    INFO("secret '" << secret << "'");
    StoreOptions options = client_options(server);
    options.secret = secret;
    CHECK_THROWS_AS(Store(options), SecretRejected);
    // The same by hand: the proof of a wrong secret is refused, and the connection closed.
    RawClient raw(server.port());
    CHECK(raw.try_hello(secret) == kError);
    CHECK(raw.closed_by_server());
  }
  CHECK(server.stats().failed_hellos == 8);
  require_server_healthy(server, "wrong secrets");
}

// The attack of issue 24: eleven 20-byte messages (an HTTP GET does as well) from 127.0.0.1 used to lock that
// address out for a minute, the job's own ranks included. Nothing a stranger sends now keeps out a client
// that proves the secret.
TEST_CASE("store security: strangers' garbage and wrong proofs never lock the job's own clients out",
          "[store][security]") {
  StoreServer server(server_options());
  for (int attempt = 0; attempt < 11; ++attempt) {
    RawClient raw(server.port());  // from 127.0.0.1, where the job's clients come from too
    raw.send(bytes_of("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));  // 26 bytes
    CHECK(raw.closed_by_server());
  }
  for (int attempt = 0; attempt < 50; ++attempt) {
    RawClient raw(server.port());
    CHECK(raw.try_hello("guess-" + std::to_string(attempt)) == kError);
  }
  CHECK(server.stats().failed_hellos == 61);
  require_server_healthy(server, "garbage and wrong proofs from the job's own address");
}

TEST_CASE("store security: strangers who hold connections open cost a bounded number of slots",
          "[store][security]") {
  StoreOptions options = server_options();
  options.max_pending_handshakes = 8;
  CapturedLog log(options);
  StoreServer server(options);
  // 40 connections that never authenticate: each new one beyond 8 drops the oldest, which is told why.
  std::vector<std::unique_ptr<RawClient>> idle;
  for (int i = 0; i < 40; ++i) idle.push_back(std::make_unique<RawClient>(server.port()));
  auto first = idle.front()->read_frame();
  REQUIRE(first.has_value());
  CHECK(first->opcode == kError);
  CHECK(first->key == "limit");
  CHECK_THAT(std::string(first->value.begin(), first->value.end()),
             Catch::Contains("too many connections authenticating at once (limit 8)"));
  for (int i = 0; i < 32; ++i) CHECK(idle[i]->closed_by_server());
  // A client of the job gets in at once, and the strangers hold at most 8 slots.
  require_server_healthy(server, "idle strangers");
  CHECK(server.stats().connections <= 8 + 1);
  CHECK(server.stats().refused_connections >= 32);
  CHECK(log.lines().size() <= 5);  // the drops are logged in summary (see the next test)
}

TEST_CASE("store security: a connection that does not authenticate in time is dropped", "[store][security]") {
  StoreOptions options = server_options();
  options.handshake_timeout = 300ms;
  StoreServer server(options);
  RawClient silent(server.port());
  RawClient halfway(server.port());  // says HELLO but never proves anything
  halfway.send(raw_frame(kHello, "", Bytes(16, 7)));
  auto challenge = halfway.read_frame();
  REQUIRE(challenge.has_value());
  CHECK(challenge->opcode == kChallenge);
  auto start = Clock::now();
  CHECK(silent.closed_by_server(3000ms));
  CHECK(halfway.closed_by_server(3000ms));
  CHECK(seconds_since(start) >= 0.2);
  CHECK(seconds_since(start) < 0.3 + std::chrono::duration<double>(kSlack).count());
  require_server_healthy(server, "slow handshakes");
}

TEST_CASE("store security: dropped strangers are logged in summary, not one line each", "[store][security]") {
  StoreOptions options = server_options();
  CapturedLog log(options);
  {
    StoreServer server(options);
    for (int i = 0; i < 200; ++i) {
      RawClient raw(server.port());
      raw.send(bytes_of("GET / HTTP/1.1\r\nHost: x\r\n\r\n"));  // 26 bytes
      CHECK(raw.closed_by_server());
    }
  }  // stopping writes the summary of what was not logged yet
  const std::vector<std::string> lines = log.lines();
  for (const auto& line : lines) std::printf("logged: %s\n", line.c_str());
  CHECK(lines.size() == 6);
  REQUIRE_FALSE(lines.empty());
  CHECK_THAT(lines.back(), Catch::Contains("195 more connections from unauthenticated peers dropped") &&
                               Catch::Contains("195 sent a bad first frame"));
}

TEST_CASE("store security: the drop log writes a few lines per interval and a summary of the rest",
          "[store][security]") {
  using std::chrono::seconds;
  std::vector<std::string> lines;
  ferry::transport::DropLog log([&](const std::string& line) { lines.push_back(line); }, 2, seconds(10));
  const auto t0 = Clock::now();
  CHECK(log.next_flush() == Clock::time_point::max());
  for (int i = 0; i < 5; ++i) log.dropped("too slow", "line " + std::to_string(i), t0 + seconds(1));
  log.dropped("garbage", "line 5", t0 + seconds(2));
  CHECK(lines == std::vector<std::string>{"line 0", "line 1"});
  CHECK(log.suppressed() == 4);
  log.flush(t0 + seconds(5));  // the interval is not over
  CHECK(lines.size() == 2);
  log.flush(t0 + seconds(11));
  REQUIRE(lines.size() == 3);
  CHECK_THAT(lines[2], Catch::Contains("4 more connections") && Catch::Contains("1 garbage, 3 too slow"));
  CHECK(log.next_flush() == Clock::time_point::max());
  log.dropped("garbage", "line 6", t0 + seconds(12));  // a new interval: logged again
  CHECK(lines.back() == "line 6");
}

TEST_CASE("store security: a handed-over listening socket is served and left open", "[store][security]") {
  const int fd = loopback_socket(true);
  const std::uint16_t port = port_of_socket(fd);
  for (int round = 0; round < 2; ++round) {  // adopted twice: the server works on a copy
    StoreOptions options = server_options();
    options.listen_fd = fd;
    StoreServer server(options);
    CHECK(server.port() == port);
    Store client(client_options(server));
    client.set("round", Bytes{static_cast<std::uint8_t>(round)});
    CHECK(client.get("round") == Bytes{static_cast<std::uint8_t>(round)});
  }
  CHECK(::fcntl(fd, F_GETFD) >= 0);

  StoreOptions mismatch = server_options();
  mismatch.listen_fd = fd;
  mismatch.port = port == 65535 ? 1 : port + 1;
  CHECK_THAT(expect_error([&] { StoreServer server(mismatch); }).what(),
             Catch::Contains("bound to port " + std::to_string(port)));

  int unbound = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  StoreOptions not_listening = server_options();
  not_listening.listen_fd = unbound;
  CHECK_THAT(expect_error([&] { StoreServer server(not_listening); }).what(),
             Catch::Contains("not a listening TCP socket"));
  StoreOptions closed = server_options();
  closed.listen_fd = unbound;
  ::close(unbound);
  CHECK(expect_error([&] { StoreServer server(closed); }).code() == Errc::invalid_argument);
  ::close(fd);
}
