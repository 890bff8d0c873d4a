// In-process ranks for tests: one thread per rank, each with its own ferry::Group (rank 0 hosts the store).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <random>
#include <string>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/peers.hpp"

namespace ferry::test {

inline std::uint16_t free_port() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) fail_errno("socket", errno);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) fail_errno("bind", errno);
  socklen_t len = sizeof(addr);
  getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  close(fd);
  return ntohs(addr.sin_port);
}

// A job id no other test run shares, so shm names and leftovers can be checked per test.
inline std::string unique_job_id(const std::string& stem) {
  std::random_device source;
  return stem + "-" + std::to_string(getpid()) + "-" + std::to_string(source());
}

inline transport::Peers peers_of(Group& group, std::chrono::milliseconds timeout) {
  transport::Peers peers;
  peers.store = &group.store();
  peers.rank = group.rank();
  peers.world_size = group.world_size();
  peers.local_rank = group.local_rank();
  peers.local_size = group.local_size();
  peers.job_id = group.job().job_id;
  peers.timeout = timeout;
  return peers;
}

// Runs body(group) on `world` ranks (local_size per node), one thread each; rethrows the first failure after
// every rank finished.
template <typename Body>
void run_ranks(int world, int local_size, const std::string& job_id, Body body,
               std::chrono::milliseconds timeout = std::chrono::seconds(20)) {
  auto port = free_port();
  std::vector<std::future<void>> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.push_back(std::async(std::launch::async, [=] {
      JobEnv job;
      job.launcher = Launcher::ferry;
      job.rank = r;
      job.world_size = world;
      job.local_size = local_size;
      job.local_rank = r % local_size;
      job.store_port = port;
      job.secret = "peer-test-secret";
      job.job_id = job_id;
      GroupOptions options;
      options.timeout = timeout;
      auto group = Group::from_job(job, options);
      body(group);
    }));
  }
  std::exception_ptr first;
  for (auto& rank : ranks) {
    try {
      rank.get();
    } catch (...) {
      if (!first) first = std::current_exception();
    }
  }
  if (first) std::rethrow_exception(first);
}

}  // namespace ferry::test
