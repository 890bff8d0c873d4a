// Plain blocking TCP between two ranks: the raw ceiling the fabric is compared with (iperf-style streams and
// ping-pong). Every call is bounded by the socket timeouts set from the caller's deadline.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "ferry/core/deadline.hpp"

namespace ferry::tools {

class TcpSocket {
 public:
  TcpSocket() = default;
  explicit TcpSocket(int fd) : fd_(fd) {}
  TcpSocket(TcpSocket&& other) noexcept : fd_(other.fd_) { other.fd_ = -1; }
  TcpSocket& operator=(TcpSocket&& other) noexcept;
  ~TcpSocket();

  // A listening socket on `address` (numeric IPv4/IPv6) and a free port.
  static TcpSocket listen_on(const std::string& address);
  std::uint16_t local_port() const;
  // Accepts one connection (waits at most `timeout`).
  TcpSocket accept_one(Duration timeout) const;
  // Connects, retrying while the peer is not listening yet, until `timeout`.
  static TcpSocket connect_to(const std::string& address, std::uint16_t port, Duration timeout);

  // Blocking I/O of exactly `bytes` (timeout per call as set by set_timeout); throws naming `what`.
  void send_all(const void* data, std::size_t bytes, const char* what) const;
  void recv_all(void* data, std::size_t bytes, const char* what) const;
  void set_timeout(Duration timeout) const;
  void set_no_delay() const;
  bool valid() const { return fd_ >= 0; }

 private:
  int fd_ = -1;
};

}  // namespace ferry::tools
