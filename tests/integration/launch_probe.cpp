// A rank for the --netns tests: reports where it runs (address, hostname, namespaces) and proves that TCP
// crosses from node 1 to node 0. Rank 0 listens on its node's address; the first rank of node 1 connects.
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

namespace {

constexpr int kPort = 29700;
constexpr int kTimeoutMs = 20000;

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value != nullptr ? value : "";
}

std::string namespace_id(const char* kind) {
  char target[128] = {};
  std::string path = std::string("/proc/self/ns/") + kind;
  return ::readlink(path.c_str(), target, sizeof target - 1) > 0 ? target : "?";
}

sockaddr_in address_of(const std::string& host) {
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_port = htons(kPort);
  ::inet_pton(AF_INET, host.c_str(), &address.sin_addr);
  return address;
}

int die(const char* what) {
  std::fprintf(stderr, "launch_probe: %s: %s\n", what, std::strerror(errno));
  return 1;
}

int listen_once(const std::string& host) {
  int listener = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  auto address = address_of(host);
  if (::bind(listener, reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) return die("bind");
  if (::listen(listener, 4) != 0) return die("listen");
  pollfd pfd{listener, POLLIN, 0};
  if (::poll(&pfd, 1, kTimeoutMs) != 1) return die("no connection arrived");
  int connection = ::accept(listener, nullptr, nullptr);
  if (connection < 0) return die("accept");
  char message[256] = {};
  std::size_t have = 0;
  while (have < sizeof message - 1) {
    pollfd in{connection, POLLIN, 0};
    if (::poll(&in, 1, kTimeoutMs) != 1) return die("no message arrived");
    ssize_t got = ::read(connection, message + have, sizeof message - 1 - have);
    if (got <= 0) break;
    have += static_cast<std::size_t>(got);
  }
  std::printf("accepted: %s\n", message);
  ::close(connection);
  ::close(listener);
  return 0;
}

int connect_and_greet(const std::string& host, const std::string& greeting) {
  auto deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(kTimeoutMs);
  while (true) {
    int sock = ::socket(AF_INET, SOCK_STREAM, 0);
    auto address = address_of(host);
    if (::connect(sock, reinterpret_cast<sockaddr*>(&address), sizeof address) == 0) {
      if (::write(sock, greeting.data(), greeting.size()) != static_cast<ssize_t>(greeting.size())) {
        return die("write");
      }
      ::close(sock);
      return 0;
    }
    ::close(sock);
    if (std::chrono::steady_clock::now() >= deadline) return die("connect");
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // rank 0 may not listen yet
  }
}

}  // namespace

int main() {
  const int rank = std::atoi(env("FERRY_RANK").c_str());
  const int local_size = std::atoi(env("FERRY_LOCAL_WORLD_SIZE").c_str());
  const std::string address = env("FERRY_NODE_ADDR");
  const std::string store = env("FERRY_STORE");
  const std::string node0 = store.substr(0, store.find(':'));
  char hostname[256] = {};
  ::gethostname(hostname, sizeof hostname - 1);
  std::printf("probe rank=%d node=%s addr=%s host=%s ipc=%s net=%s uts=%s\n", rank, env("FERRY_NODE").c_str(),
              address.c_str(), hostname, namespace_id("ipc").c_str(), namespace_id("net").c_str(),
              namespace_id("uts").c_str());
  std::fflush(stdout);
  if (rank == 0) return listen_once(address);
  if (rank == local_size)
    return connect_and_greet(node0, std::string("hello from ") + hostname + " " + address);
  return 0;
}
