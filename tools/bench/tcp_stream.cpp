#include "bench/tcp_stream.hpp"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <thread>

#include "ferry/core/error.hpp"

namespace ferry::tools {
namespace {

sockaddr_storage resolve(const std::string& address, std::uint16_t port, socklen_t* length) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  std::string service = std::to_string(port);
  if (int err = getaddrinfo(address.c_str(), service.c_str(), &hints, &found); err != 0 || found == nullptr) {
    fail(Errc::invalid_argument, "tcp: cannot use address '" + address + "': " + gai_strerror(err));
  }
  sockaddr_storage storage{};
  std::memcpy(&storage, found->ai_addr, found->ai_addrlen);
  *length = found->ai_addrlen;
  freeaddrinfo(found);
  return storage;
}

}  // namespace

TcpSocket& TcpSocket::operator=(TcpSocket&& other) noexcept {
  if (this != &other) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = other.fd_;
    other.fd_ = -1;
  }
  return *this;
}

TcpSocket::~TcpSocket() {
  if (fd_ >= 0) ::close(fd_);
}

TcpSocket TcpSocket::listen_on(const std::string& address) {
  socklen_t length = 0;
  sockaddr_storage where = resolve(address, 0, &length);
  TcpSocket socket(::socket(where.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!socket.valid()) fail_errno("tcp: socket", errno);
  int one = 1;
  ::setsockopt(socket.fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  if (::bind(socket.fd_, reinterpret_cast<sockaddr*>(&where), length) != 0) {
    fail_errno("tcp: bind to " + address, errno);
  }
  if (::listen(socket.fd_, 4) != 0) fail_errno("tcp: listen on " + address, errno);
  return socket;
}

std::uint16_t TcpSocket::local_port() const {
  sockaddr_storage where{};
  socklen_t length = sizeof where;
  if (::getsockname(fd_, reinterpret_cast<sockaddr*>(&where), &length) != 0)
    fail_errno("tcp: getsockname", errno);
  if (where.ss_family == AF_INET6) return ntohs(reinterpret_cast<sockaddr_in6*>(&where)->sin6_port);
  return ntohs(reinterpret_cast<sockaddr_in*>(&where)->sin_port);
}

TcpSocket TcpSocket::accept_one(Duration timeout) const {
  pollfd pfd{fd_, POLLIN, 0};
  int ready = ::poll(&pfd, 1, Deadline(timeout).remaining_ms());
  if (ready < 0) fail_errno("tcp: poll for a connection", errno);
  if (ready == 0) fail(Errc::timeout, "tcp: no connection arrived on port " + std::to_string(local_port()));
  TcpSocket accepted(::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC));
  if (!accepted.valid()) fail_errno("tcp: accept", errno);
  return accepted;
}

TcpSocket TcpSocket::connect_to(const std::string& address, std::uint16_t port, Duration timeout) {
  socklen_t length = 0;
  sockaddr_storage where = resolve(address, port, &length);
  Deadline deadline(timeout);
  Backoff backoff;
  for (;;) {
    TcpSocket socket(::socket(where.ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!socket.valid()) fail_errno("tcp: socket", errno);
    if (::connect(socket.fd_, reinterpret_cast<sockaddr*>(&where), length) == 0) return socket;
    int err = errno;
    if (deadline.expired() || (err != ECONNREFUSED && err != EINTR)) {
      fail_errno("tcp: connect to " + address + ":" + std::to_string(port), err);
    }
    backoff.pause();
  }
}

void TcpSocket::set_timeout(Duration timeout) const {
  auto micros = std::chrono::duration_cast<std::chrono::microseconds>(timeout).count();
  timeval tv{static_cast<time_t>(micros / 1000000), static_cast<suseconds_t>(micros % 1000000)};
  ::setsockopt(fd_, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  ::setsockopt(fd_, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
}

void TcpSocket::set_no_delay() const {
  int one = 1;
  ::setsockopt(fd_, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
}

void TcpSocket::send_all(const void* data, std::size_t bytes, const char* what) const {
  const auto* at = static_cast<const char*>(data);
  while (bytes > 0) {
    ssize_t sent = ::send(fd_, at, bytes, MSG_NOSIGNAL);
    if (sent < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        fail(Errc::timeout, std::string("tcp: ") + what + ": send timed out");
      fail_errno(std::string("tcp: ") + what + ": send", errno);
    }
    at += sent;
    bytes -= static_cast<std::size_t>(sent);
  }
}

void TcpSocket::recv_all(void* data, std::size_t bytes, const char* what) const {
  auto* at = static_cast<char*>(data);
  while (bytes > 0) {
    ssize_t got = ::recv(fd_, at, bytes, 0);
    if (got == 0) fail(Errc::peer_failure, std::string("tcp: ") + what + ": the peer closed the connection");
    if (got < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK)
        fail(Errc::timeout, std::string("tcp: ") + what + ": recv timed out");
      fail_errno(std::string("tcp: ") + what + ": recv", errno);
    }
    at += got;
    bytes -= static_cast<std::size_t>(got);
  }
}

}  // namespace ferry::tools
