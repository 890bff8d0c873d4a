// Loopback sockets for tests: a listening socket the kernel picked a port for, or just such a port.
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
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

// A port on 127.0.0.1 that was free a moment ago (for code under test that binds it itself).
inline std::uint16_t free_loopback_port() {
  const int fd = loopback_socket(false);
  const std::uint16_t port = port_of_socket(fd);
  ::close(fd);
  return port;
}

}  // namespace ferry::test
