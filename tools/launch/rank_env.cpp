#include "launch/rank_env.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <map>

#include "ferry/core/error.hpp"
#include "launch/unique_fd.hpp"

namespace ferry::tools::launch {

std::string random_hex(std::size_t chars) {
  UniqueFd urandom(::open("/dev/urandom", O_RDONLY | O_CLOEXEC));
  if (!urandom) fail_errno("ferry launch: open /dev/urandom", errno);
  std::string bytes((chars + 1) / 2, '\0');
  std::size_t have = 0;
  while (have < bytes.size()) {
    ssize_t got = ::read(urandom.get(), bytes.data() + have, bytes.size() - have);
    if (got < 0 && errno == EINTR) continue;
    if (got <= 0) fail_errno("ferry launch: read /dev/urandom", got < 0 ? errno : EIO);
    have += static_cast<std::size_t>(got);
  }
  static constexpr char kDigits[] = "0123456789abcdef";
  std::string hex;
  for (unsigned char byte : bytes) {
    hex += kDigits[byte >> 4];
    hex += kDigits[byte & 0xf];
  }
  hex.resize(chars);
  return hex;
}

UniqueFd listen_on_free_port() {
  UniqueFd sock(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
  if (!sock) fail_errno("ferry launch: socket for the store", errno);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = 0;
  if (::bind(sock.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
    fail_errno("ferry launch: bind 127.0.0.1:0 for the store", errno);
  }
  if (::listen(sock.get(), SOMAXCONN) != 0) fail_errno("ferry launch: listen for the store", errno);
  return sock;
}

int free_loopback_port() {
  return bound_port(listen_on_free_port().get());
}

int bound_port(int fd) {
  sockaddr_in address{};
  socklen_t length = sizeof address;
  if (::getsockname(fd, reinterpret_cast<sockaddr*>(&address), &length) != 0) {
    fail_errno("ferry launch: getsockname", errno);
  }
  return ntohs(address.sin_port);
}

std::vector<std::string> rank_environment(const JobSpec& job, int rank, const char* const* base) {
  const int node = job.node_of(rank);
  std::map<std::string, std::string> ours = {
      {"FERRY_RANK", std::to_string(rank)},
      {"FERRY_WORLD_SIZE", std::to_string(job.world_size())},
      {"FERRY_LOCAL_RANK", std::to_string(job.local_rank_of(rank))},
      {"FERRY_LOCAL_WORLD_SIZE", std::to_string(job.ranks_per_node)},
      {"FERRY_NODE", std::to_string(node)},
      {"FERRY_NUM_NODES", std::to_string(job.nodes)},
      {"FERRY_STORE", job.store_host + ":" + std::to_string(job.store_port)},
      {"FERRY_SECRET", job.secret},
      {"FERRY_JOB_ID", job.job_id},
      {"FERRY_NODE_ADDR", job.node_addresses.at(static_cast<std::size_t>(node))},
      {"FERRY_LAUNCHER", "1"},
      // torchrun's names, for torch.distributed (ferry itself reads the FERRY_* ones first).
      {"RANK", std::to_string(rank)},
      {"WORLD_SIZE", std::to_string(job.world_size())},
      {"LOCAL_RANK", std::to_string(job.local_rank_of(rank))},
      {"LOCAL_WORLD_SIZE", std::to_string(job.ranks_per_node)},
      {"GROUP_RANK", std::to_string(node)},
      {"MASTER_ADDR", job.node_addresses.at(0)},
      {"MASTER_PORT", std::to_string(job.master_port)},
  };
  // Rank 0 alone serves the store, on the socket the launcher bound; nobody inherits a descriptor number from
  // an enclosing job.
  if (!job.node_interface.empty()) ours["GLOO_SOCKET_IFNAME"] = job.node_interface;
  std::map<std::string, std::string> rank_only;
  if (rank == 0 && job.store_fd >= 0) rank_only["FERRY_STORE_FD"] = std::to_string(job.store_fd);
  // Several ranks share each core: one BLAS / OpenMP thread per rank unless the user chose otherwise.
  std::map<std::string, std::string> defaults = {{"OPENBLAS_NUM_THREADS", "1"}, {"OMP_NUM_THREADS", "1"}};

  std::vector<std::string> environment;
  for (const char* const* entry = base; entry != nullptr && *entry != nullptr; ++entry) {
    std::string text = *entry;
    std::string name = text.substr(0, text.find('='));
    if (ours.count(name) != 0 || name == "FERRY_STORE_FD") continue;
    defaults.erase(name);
    environment.push_back(std::move(text));
  }
  for (const auto& [name, value] : ours) environment.push_back(name + "=" + value);
  for (const auto& [name, value] : rank_only) environment.push_back(name + "=" + value);
  for (const auto& [name, value] : defaults) environment.push_back(name + "=" + value);
  return environment;
}

}  // namespace ferry::tools::launch
