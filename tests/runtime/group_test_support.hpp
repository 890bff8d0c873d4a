// Groups of several ranks inside one process (one thread per rank), shared by the test_group sources.
#pragma once

#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <vector>

#include "common/loopback.hpp"
#include "ferry/group.hpp"

namespace group_test {

using namespace std::chrono_literals;

inline std::uint16_t free_port() {
  return ferry::test::free_loopback_port();
}

inline ferry::JobEnv job_for(int rank, int world, int local_size, std::uint16_t port) {
  ferry::JobEnv job;
  job.launcher = ferry::Launcher::ferry;
  job.rank = rank;
  job.world_size = world;
  job.local_size = local_size;
  job.local_rank = rank % local_size;
  job.store_port = port;
  job.secret = "test-secret";
  job.job_id = "test";
  return job;
}

// Runs `body(group)` on one thread per job (rank) and rethrows the first failure.
template <typename Body>
void run_jobs(const std::vector<ferry::JobEnv>& jobs, Body body, std::chrono::milliseconds timeout = 20s) {
  std::vector<std::future<void>> ranks;
  for (const auto& job : jobs) {
    ranks.push_back(std::async(std::launch::async, [=] {
      ferry::GroupOptions options;
      options.timeout = timeout;
      auto group = ferry::Group::from_job(job, options);
      body(group);
    }));
  }
  for (auto& rank : ranks) rank.get();
}

// Runs `body(group)` on `world` ranks, one thread each, and rethrows the first failure.
template <typename Body>
void run_ranks(int world, int local_size, Body body, std::chrono::milliseconds timeout = 20s) {
  auto port = free_port();
  std::vector<ferry::JobEnv> jobs;
  for (int r = 0; r < world; ++r) jobs.push_back(job_for(r, world, local_size, port));
  run_jobs(jobs, body, timeout);
}

}  // namespace group_test
