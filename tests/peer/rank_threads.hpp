// In-process ranks for tests: one thread per rank, each with its own ferry::Group (rank 0 hosts the store).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <future>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "../common/loopback.hpp"
#include "../common/thread_check.hpp"  // expect(): rank threads throw, run_ranks reports on the main thread
#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/runtime/group_peers.hpp"
#include "ferry/transport/peers.hpp"

namespace ferry::test {

inline std::uint16_t free_port() {
  return ferry::test::free_loopback_port();  // outside the ephemeral range (loopback.hpp says why)
}

// A job id no other test run shares, so shm names and leftovers can be checked per test.
inline std::string unique_job_id(const std::string& stem) {
  std::random_device source;
  return stem + "-" + std::to_string(getpid()) + "-" + std::to_string(source());
}

inline transport::Peers peers_of(Group& group, std::chrono::milliseconds timeout) {
  return runtime::group_peers(group, timeout);
}

// Ends a rank's use of the group without pulling the store out from under the others: rank 0 hosts the store
// and must not destroy it while another rank still waits for a reply (say, to the last barrier). Every other
// rank reports its departure; rank 0 waits for all of them.
inline void depart(Group& group, std::chrono::milliseconds timeout = std::chrono::seconds(30)) {
  const std::string key = "ferry-test/departed";
  if (group.rank() != 0) {
    group.store().add(key, 1);
    return;
  }
  Deadline deadline(timeout);
  Backoff backoff;
  while (group.store().add(key, 0) < group.world_size() - 1) {
    if (deadline.expired()) fail(Errc::timeout, "rank 0: not every rank departed");
    backoff.pause();
  }
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
      std::exception_ptr failure;
      try {
        body(group);
      } catch (...) {
        failure = std::current_exception();
      }
      depart(group);
      if (failure) std::rethrow_exception(failure);
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
