// Thin, deadline-aware TCP helpers for the bootstrap store.
//
// Every socket made here is non-blocking: the store server multiplexes many of them in one poll loop, and the
// client waits with poll() against a Deadline, so no call here can block past its deadline. Sends use
// MSG_NOSIGNAL, so a peer that vanished surfaces as a status, never as SIGPIPE.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "ferry/core/deadline.hpp"

namespace ferry::transport::net {

// Owns one file descriptor; closes it on destruction.
class Fd {
 public:
  Fd() = default;
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() { reset(); }
  Fd(Fd&& other) noexcept : fd_(other.release()) {}
  Fd& operator=(Fd&& other) noexcept {
    if (this != &other) reset(other.release());
    return *this;
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void reset(int fd = -1);

 private:
  int fd_ = -1;
};

// "host:port", with brackets around IPv6 literals.
std::string join_host_port(const std::string& host, std::uint16_t port);

// Binds and listens on host:port (port 0: the kernel picks one; empty host: every interface). SO_REUSEADDR is
// set so a restarted job can rebind a port still in TIME_WAIT. Throws Errc::invalid_argument for a host that
// does not resolve and Errc::system when no address can be bound.
Fd listen_tcp(const std::string& host, std::uint16_t port);

// A non-blocking, close-on-exec duplicate of `fd`, which must be a bound, listening TCP socket (handed over
// by a launcher); `fd` itself stays open. Throws Errc::invalid_argument naming the descriptor otherwise.
Fd adopt_listener(int fd);

// Connects to host:port, retrying refused/unreachable attempts (the server may not be up yet) with sleeps
// growing from 10 to 200 ms until `deadline`. Throws Errc::timeout naming the endpoint and the last error.
// Without `retry`, one round of attempts: a refusal throws Errc::peer_failure at once (the server is gone).
Fd connect_tcp(const std::string& host, std::uint16_t port, const Deadline& deadline, bool retry = true);

// Accepts one pending connection on a non-blocking listener; returns an invalid Fd when none is pending.
// Sets errno and returns an invalid Fd on failure (the caller decides whether EMFILE and friends are fatal).
Fd accept_tcp(int listener);

void set_nonblocking(int fd);
void set_nodelay(int fd);

std::uint16_t local_port(int fd);
// The local IP of a connected socket (what a peer would use to reach this end), without the port.
std::string local_ip(int fd);
// "ip:port" of the remote end, or "<unknown peer>" when the socket is no longer connected.
std::string peer_endpoint(int fd);
// The remote end's IP alone (what a peer is known by across its connections), or "<unknown peer>".
std::string peer_ip(int fd);

enum class IoStatus {
  ok,         // every byte moved
  closed,     // the peer closed the connection or reset it (error_code says how, 0 for an orderly close)
  timed_out,  // the deadline passed first
};
struct IoResult {
  IoStatus status = IoStatus::ok;
  int error_code = 0;
};

// Move exactly `size` bytes, waiting with poll() until `deadline`.
IoResult send_all(int fd, const void* data, std::size_t size, const Deadline& deadline);
IoResult recv_all(int fd, void* data, std::size_t size, const Deadline& deadline);

}  // namespace ferry::transport::net
