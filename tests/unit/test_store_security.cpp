// Who may talk to the store: never anyone without the job secret (an empty one included), a source that keeps
// failing HELLO is refused promptly instead of being served or left hanging, and a listening socket handed
// over by a launcher is served without the port ever being free.
#include <fcntl.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>

#include "bootstrap/hello_limiter.hpp"
#include "common/loopback.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/store.hpp"
#include "store_test_support.hpp"

using namespace store_test;
using ferry::transport::HelloLimiter;
using ferry::transport::SecretRejected;

using ferry::test::loopback_socket;
using ferry::test::port_of_socket;

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
    // An empty HELLO on the raw wire is no way around it either.
    RawClient raw(server.port());
    raw.send(raw_frame(kHello, "", bytes_of(secret)));
    auto reply = raw.read_frame();
    REQUIRE(reply.has_value());
    CHECK(reply->opcode == kError);
    CHECK(reply->key == "secret");
    CHECK(raw.closed_by_server());
  }
  CHECK(server.stats().failed_hellos == 8);
  require_server_healthy(server, "wrong secrets");
}

TEST_CASE("store security: a flood of bad HELLOs from one source is refused, promptly", "[store][security]") {
  StoreOptions options = server_options();
  options.max_failed_hellos = 5;
  options.hello_lockout = std::chrono::seconds(60);
  StoreServer server(options);
  const char* attacker = "127.0.0.2";  // another "host" on loopback; the job's ranks use 127.0.0.1

  // The first max_failed_hellos wrong guesses are told the secret is wrong...
  for (int attempt = 0; attempt < options.max_failed_hellos; ++attempt) {
    RawClient raw(server.port(), attacker);
    raw.send(raw_frame(kHello, "", bytes_of("guess-" + std::to_string(attempt))));
    auto reply = raw.read_frame();
    REQUIRE(reply.has_value());
    CHECK(reply->key == "secret");
    CHECK(raw.closed_by_server());
  }
  // ...then every connection from that source is refused at once, without its HELLO being looked at: a
  // flood costs one accept and one short reply each, and gets an answer, not a hang.
  constexpr int kFlood = 200;
  auto start = Clock::now();
  for (int attempt = 0; attempt < kFlood; ++attempt) {
    RawClient raw(server.port(), attacker);
    raw.send(raw_frame(kHello, "", bytes_of(attempt % 2 ? "job-secret-1234" : "another-guess")));
    auto reply = raw.read_frame();
    REQUIRE(reply.has_value());
    CHECK(reply->opcode == kError);
    CHECK(reply->key == "limit");
    REQUIRE_THAT(std::string(reply->value.begin(), reply->value.end()),
                 Catch::Contains("too many failed HELLOs from 127.0.0.2"));
    CHECK(raw.closed_by_server());
  }
  const double flood_seconds = seconds_since(start);
  std::printf("store security: %d refused connections in %.3f s\n", kFlood, flood_seconds);
  CHECK(flood_seconds < 10.0);

  // Garbage instead of a HELLO counts as a failed attempt too.
  StoreOptions strict = server_options();
  strict.max_failed_hellos = 2;
  StoreServer other(strict);
  for (int attempt = 0; attempt < 2; ++attempt) {
    RawClient raw(other.port(), attacker);
    raw.send(raw_header(kSet, 1, 0));
    CHECK(raw.closed_by_server());
  }
  RawClient refused(other.port(), attacker);
  auto reply = refused.read_frame();
  REQUIRE(reply.has_value());
  CHECK(reply->key == "limit");

  // The job's own ranks, from another source, are served as before.
  require_server_healthy(server, "hello flood");
  auto stats = server.stats();
  CHECK(stats.failed_hellos == 5);
  CHECK(stats.refused_connections == kFlood);
}

TEST_CASE("store security: a client refused for now keeps asking until its deadline", "[store][security]") {
  StoreOptions options = server_options();
  options.max_failed_hellos = 1;
  options.hello_lockout = std::chrono::milliseconds(600);
  StoreServer server(options);
  {
    RawClient raw(server.port());  // from 127.0.0.1, where the client below comes from too
    raw.send(raw_frame(kHello, "", bytes_of("wrong")));
    REQUIRE(raw.closed_by_server());
  }
  // Locked out for 600 ms: the client is refused, retries, and gets in once the lockout is over.
  auto start = Clock::now();
  Store store(client_options(server, 5000ms));
  const double waited = seconds_since(start);
  CHECK(waited > 0.3);
  CHECK(waited < 0.6 + std::chrono::duration<double>(kSlack).count());
  store.set("in", bytes_of("after the lockout"));
  CHECK(server.stats().refused_connections >= 1);

  // With a deadline shorter than the lockout, the refusal itself is the error.
  {
    RawClient raw(server.port());
    raw.send(raw_frame(kHello, "", bytes_of("wrong again")));
    REQUIRE(raw.closed_by_server());
  }
  auto error = expect_error([&] { Store late(client_options(server, 200ms)); });
  CHECK_THAT(error.what(), Catch::Contains("too many failed HELLOs from 127.0.0.1"));
}

TEST_CASE("store security: the HELLO limiter forgives slow failures and ends its lockout",
          "[store][security]") {
  using std::chrono::seconds;
  HelloLimiter limiter(3, seconds(10), seconds(30));
  const auto t0 = Clock::now();
  CHECK_FALSE(limiter.record_failure("10.0.0.1", t0));
  CHECK_FALSE(limiter.record_failure("10.0.0.1", t0 + seconds(1)));
  // The window restarts after 10 s: two old failures do not add up with a new one.
  CHECK_FALSE(limiter.record_failure("10.0.0.1", t0 + seconds(12)));
  CHECK(limiter.refused_for("10.0.0.1", t0 + seconds(12)) == ferry::Duration::zero());
  CHECK_FALSE(limiter.record_failure("10.0.0.1", t0 + seconds(13)));
  CHECK(limiter.record_failure("10.0.0.1", t0 + seconds(14)));
  CHECK(limiter.refused_for("10.0.0.1", t0 + seconds(15)) == seconds(29));
  CHECK(limiter.refused_for("10.0.0.2", t0 + seconds(15)) == ferry::Duration::zero());
  CHECK(limiter.refused_for("10.0.0.1", t0 + seconds(44)) == ferry::Duration::zero());
  // Thousands of sources failing once each stay bounded in memory.
  for (int i = 0; i < 5000; ++i)
    limiter.record_failure("src" + std::to_string(i), t0 + seconds(100 + i * 11));
  CHECK(limiter.tracked_sources() <= 1025);
  CHECK_THROWS_AS(HelloLimiter(0, seconds(1), seconds(1)), ferry::Error);
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
