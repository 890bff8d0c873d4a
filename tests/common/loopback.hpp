// Loopback sockets for tests: a listening socket the kernel picked a port for, or a port that is free.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <random>
#include <stdexcept>

namespace ferry::test {

// A TCP socket bound to 127.0.0.1 at a port of the kernel's choice, listening when `listening`.
inline int loopback_socket(bool listening) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd < 0 || ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) != 0 ||
      (listening && ::listen(fd, 16) != 0)) {
    if (fd >= 0) ::close(fd);
    throw std::runtime_error("cannot bind a loopback socket");
  }
  return fd;
}

inline std::uint16_t port_of_socket(int fd) {
  sockaddr_in address{};
  socklen_t length = sizeof(address);
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0)
    throw std::runtime_error("getsockname failed");
  return ntohs(address.sin_port);
}

// Whether 127.0.0.1:`port` can be bound now.
inline bool loopback_port_free(std::uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(port);
  const bool free = ::bind(fd, reinterpret_cast<sockaddr*>(&address), sizeof(address)) == 0;
  ::close(fd);
  return free;
}

// A port on 127.0.0.1 that was free a moment ago (for code under test that binds it itself). Drawn from
// [20000, 32000), below the kernel's ephemeral range (32768-60999 by default), where bind(0) and every
// outgoing connection take their local ports: a port from that range can be taken by another test's
// connection in the seconds before the code under test binds it (seen in CI under ctest -j2: "cannot listen
// on 127.0.0.1:54689: Address already in use"). The port below it is free too (callers that pass
// MASTER_PORT = port - 1 to a launcher convention).
inline std::uint16_t free_loopback_port() {
  static std::mt19937 draw(std::random_device{}() ^ static_cast<unsigned>(::getpid()));
  for (int attempt = 0; attempt < 1000; ++attempt) {
    const auto port = static_cast<std::uint16_t>(20001 + draw() % 11999);
    if (loopback_port_free(port) && loopback_port_free(static_cast<std::uint16_t>(port - 1))) return port;
  }
  const int fd = loopback_socket(false);  // everything there taken: the kernel's choice
  const std::uint16_t port = port_of_socket(fd);
  ::close(fd);
  return port;
}

}  // namespace ferry::test
