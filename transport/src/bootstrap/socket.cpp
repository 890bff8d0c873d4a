#include "bootstrap/socket.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <memory>
#include <thread>

#include "ferry/core/error.hpp"

namespace ferry::transport::net {
namespace {

struct AddrInfoDeleter {
  void operator()(addrinfo* list) const { freeaddrinfo(list); }
};
using AddrInfoList = std::unique_ptr<addrinfo, AddrInfoDeleter>;

// Resolves host:port. Returns nullptr with `transient` set when the resolver asked to try again later (a DNS
// server or namespace not ready yet); throws for names that cannot resolve at all.
AddrInfoList resolve(const std::string& host, std::uint16_t port, bool passive, bool* transient) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;  // IPv4 and IPv6
  hints.ai_socktype = SOCK_STREAM;
  // No AI_ADDRCONFIG: it hides 127.0.0.1 inside a network namespace that only has a loopback device.
  hints.ai_flags = AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
  std::string service = std::to_string(port);
  addrinfo* list = nullptr;
  int rc = getaddrinfo(host.empty() ? nullptr : host.c_str(), service.c_str(), &hints, &list);
  if (rc == EAI_AGAIN && transient != nullptr) {
    *transient = true;
    return nullptr;
  }
  if (rc != 0) {
    std::string why = rc == EAI_SYSTEM ? std::strerror(errno) : gai_strerror(rc);
    fail(Errc::invalid_argument, "cannot resolve host '" + host + "': " + why);
  }
  return AddrInfoList(list);
}

std::string format_ip(const sockaddr_storage& address) {
  char text[INET6_ADDRSTRLEN] = {};
  if (address.ss_family == AF_INET) {
    auto* v4 = reinterpret_cast<const sockaddr_in*>(&address);
    inet_ntop(AF_INET, &v4->sin_addr, text, sizeof(text));
    return text;
  }
  if (address.ss_family == AF_INET6) {
    auto* v6 = reinterpret_cast<const sockaddr_in6*>(&address);
    if (IN6_IS_ADDR_V4MAPPED(&v6->sin6_addr)) {
      // A dual-stack socket reached over IPv4: report the plain IPv4 address peers can use.
      in_addr v4{};
      std::memcpy(&v4, v6->sin6_addr.s6_addr + 12, sizeof(v4));
      inet_ntop(AF_INET, &v4, text, sizeof(text));
      return text;
    }
    inet_ntop(AF_INET6, &v6->sin6_addr, text, sizeof(text));
    return text;
  }
  return "<unknown address family " + std::to_string(address.ss_family) + ">";
}

std::uint16_t port_of(const sockaddr_storage& address) {
  if (address.ss_family == AF_INET) return ntohs(reinterpret_cast<const sockaddr_in*>(&address)->sin_port);
  if (address.ss_family == AF_INET6) return ntohs(reinterpret_cast<const sockaddr_in6*>(&address)->sin6_port);
  return 0;
}

// Errors that mean "nobody is listening there yet" or "the network is not up yet": worth another try.
bool is_retryable_connect_error(int err) {
  switch (err) {
    case ECONNREFUSED:
    case ECONNRESET:
    case ECONNABORTED:
    case ENETUNREACH:
    case EHOSTUNREACH:
    case ENETDOWN:
    case EHOSTDOWN:
    case ETIMEDOUT:
    case EADDRNOTAVAIL:  // ephemeral ports momentarily exhausted
    case EAGAIN:
      return true;
    default:
      return false;
  }
}

// A client connecting to a local port nobody listens on can, when the kernel hands it that same port as its
// ephemeral source, connect to itself (TCP simultaneous open). Such a "connection" must be discarded.
bool is_self_connection(int fd) {
  sockaddr_storage mine{}, theirs{};
  socklen_t mine_len = sizeof(mine), theirs_len = sizeof(theirs);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&mine), &mine_len) != 0) return false;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&theirs), &theirs_len) != 0) return false;
  return mine_len == theirs_len && port_of(mine) == port_of(theirs) && format_ip(mine) == format_ip(theirs);
}

// One connection attempt to one resolved address, bounded by the deadline. Returns the connected socket, or
// an invalid Fd with *err set.
Fd try_connect(const addrinfo& address, const Deadline& deadline, int* err) {
  Fd fd(socket(address.ai_family, address.ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, address.ai_protocol));
  if (!fd.valid()) {
    *err = errno;
    return Fd();
  }
  if (connect(fd.get(), address.ai_addr, address.ai_addrlen) != 0) {
    if (errno != EINPROGRESS) {
      *err = errno;
      return Fd();
    }
    pollfd entry{fd.get(), POLLOUT, 0};
    int ready;
    do {
      ready = poll(&entry, 1, deadline.remaining_ms());
    } while (ready < 0 && errno == EINTR);
    if (ready < 0) {
      *err = errno;
      return Fd();
    }
    if (ready == 0) {
      *err = ETIMEDOUT;
      return Fd();
    }
    int so_error = 0;
    socklen_t length = sizeof(so_error);
    if (getsockopt(fd.get(), SOL_SOCKET, SO_ERROR, &so_error, &length) != 0) so_error = errno;
    if (so_error != 0) {
      *err = so_error;
      return Fd();
    }
  }
  if (is_self_connection(fd.get())) {
    *err = ECONNREFUSED;
    return Fd();
  }
  return fd;
}

}  // namespace

void Fd::reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

std::string join_host_port(const std::string& host, std::uint16_t port) {
  if (host.find(':') != std::string::npos) return "[" + host + "]:" + std::to_string(port);
  return host + ":" + std::to_string(port);
}

void set_nonblocking(int fd) {
  int flags = fcntl(fd, F_GETFL, 0);
  if (flags < 0 || fcntl(fd, F_SETFL, flags | O_NONBLOCK) != 0) fail_errno("fcntl(O_NONBLOCK)", errno);
}

void set_nodelay(int fd) {
  // Store traffic is small request/reply pairs: Nagle's algorithm would add a delayed-ACK round trip to each.
  int one = 1;
  if (setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0)
    fail_errno("setsockopt(TCP_NODELAY)", errno);
}

Fd listen_tcp(const std::string& host, std::uint16_t port) {
  AddrInfoList list = resolve(host, port, /*passive=*/true, nullptr);
  std::string endpoint = join_host_port(host.empty() ? "*" : host, port);
  int last_error = EADDRNOTAVAIL;
  for (addrinfo* address = list.get(); address != nullptr; address = address->ai_next) {
    Fd fd(socket(address->ai_family, address->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
                 address->ai_protocol));
    if (!fd.valid()) {
      last_error = errno;
      continue;
    }
    int one = 1;
    if (setsockopt(fd.get(), SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0) {
      last_error = errno;
      continue;
    }
    if (bind(fd.get(), address->ai_addr, address->ai_addrlen) != 0 || listen(fd.get(), SOMAXCONN) != 0) {
      last_error = errno;
      continue;
    }
    return fd;
  }
  fail_errno("cannot listen on " + endpoint, last_error);
}

Fd adopt_listener(int fd) {
  const std::string what = "the store's listening socket (descriptor " + std::to_string(fd) + ")";
  int type = 0, listening = 0;
  socklen_t length = sizeof(type);
  if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &length) != 0) {
    fail(Errc::invalid_argument, what + " is not usable: " + std::strerror(errno));
  }
  length = sizeof(listening);
  if (type != SOCK_STREAM || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &length) != 0 ||
      listening == 0) {
    fail(Errc::invalid_argument, what + " is not a listening TCP socket");
  }
  sockaddr_storage address{};
  length = sizeof(address);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0 ||
      (address.ss_family != AF_INET && address.ss_family != AF_INET6)) {
    fail(Errc::invalid_argument, what + " is not an IP socket");
  }
  Fd copy(fcntl(fd, F_DUPFD_CLOEXEC, 0));
  if (!copy.valid()) fail_errno("duplicating " + what, errno);
  set_nonblocking(copy.get());  // shared with `fd` (one open file): harmless, the launcher only holds it
  return copy;
}

Fd connect_tcp(const std::string& host, std::uint16_t port, const Deadline& deadline, bool retry) {
  using namespace std::chrono_literals;
  const std::string endpoint = join_host_port(host, port);
  std::chrono::milliseconds pause = 10ms;
  std::string last_error = "no attempt was made before the deadline";
  for (;;) {
    bool transient = false;
    AddrInfoList list = resolve(host, port, /*passive=*/false, &transient);
    if (transient) last_error = "host name lookup asked to try again later";
    for (addrinfo* address = list.get(); address != nullptr; address = address->ai_next) {
      int err = 0;
      Fd fd = try_connect(*address, deadline, &err);
      if (fd.valid()) {
        set_nodelay(fd.get());
        return fd;
      }
      if (!is_retryable_connect_error(err)) fail_errno("cannot connect to " + endpoint, err);
      last_error = std::strerror(err);
      if (deadline.expired()) break;
    }
    if (!retry) fail(Errc::peer_failure, "cannot connect to " + endpoint + ": " + last_error);
    if (deadline.expired()) fail(Errc::timeout, "gave up connecting to " + endpoint + ": " + last_error);
    // Not up yet: wait a little longer each time, so thousands of ranks starting at once do not hammer rank
    // 0.
    std::this_thread::sleep_for(std::min<Duration>(pause, deadline.remaining()));
    pause = std::min<std::chrono::milliseconds>(pause * 2, 200ms);
  }
}

Fd accept_tcp(int listener) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  int fd;
  do {
    fd = accept4(listener, reinterpret_cast<sockaddr*>(&address), &length, SOCK_NONBLOCK | SOCK_CLOEXEC);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) return Fd();
  Fd connection(fd);
  int one = 1;
  // Best effort: a socket that refuses TCP_NODELAY still works, only slower.
  (void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  return connection;
}

std::uint16_t local_port(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) fail_errno("getsockname", errno);
  return port_of(address);
}

std::string local_ip(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) fail_errno("getsockname", errno);
  return format_ip(address);
}

std::string peer_endpoint(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return "<unknown peer>";
  return join_host_port(format_ip(address), port_of(address));
}

std::string peer_ip(int fd) {
  sockaddr_storage address{};
  socklen_t length = sizeof(address);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) return "<unknown peer>";
  return format_ip(address);
}

namespace {

// Waits until `fd` is ready for `events` or the deadline passes. Returns false on timeout.
bool wait_ready(int fd, short events, const Deadline& deadline) {
  pollfd entry{fd, events, 0};
  for (;;) {
    int ready = poll(&entry, 1, deadline.remaining_ms());
    if (ready > 0) return true;  // readiness or an error/hangup: the next send/recv reports which
    if (ready == 0) return false;
    if (errno != EINTR) fail_errno("poll", errno);
  }
}

}  // namespace

IoResult send_all(int fd, const void* data, std::size_t size, const Deadline& deadline) {
  auto* bytes = static_cast<const std::uint8_t*>(data);
  while (size > 0) {
    ssize_t sent = ::send(fd, bytes, size, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent > 0) {
      bytes += sent;
      size -= static_cast<std::size_t>(sent);
      continue;
    }
    if (sent < 0 && errno == EINTR) continue;
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!wait_ready(fd, POLLOUT, deadline)) return {IoStatus::timed_out, 0};
      continue;
    }
    return {IoStatus::closed, sent < 0 ? errno : 0};
  }
  return {};
}

IoResult recv_all(int fd, void* data, std::size_t size, const Deadline& deadline) {
  auto* bytes = static_cast<std::uint8_t*>(data);
  while (size > 0) {
    ssize_t got = ::recv(fd, bytes, size, MSG_DONTWAIT);
    if (got > 0) {
      bytes += got;
      size -= static_cast<std::size_t>(got);
      continue;
    }
    if (got == 0) return {IoStatus::closed, 0};
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_ready(fd, POLLIN, deadline)) return {IoStatus::timed_out, 0};
      continue;
    }
    return {IoStatus::closed, errno};
  }
  return {};
}

}  // namespace ferry::transport::net
