// Runs peer_channel_worker modes as whole jobs through `ferry launch` and checks what every rank reports.
#pragma once

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "launch_harness.hpp"

namespace peer_channel_test {

using namespace std::chrono_literals;

struct Job {
  int nodes = 1;
  int ranks_per_node = 2;
  bool netns = false;
  std::string modes;          // comma-separated worker modes, run in order by every rank
  int worker_timeout_s = 20;  // PeerChannelConfig::timeout and the group's timeout inside the worker
};

// A token unique to this run, passed to every rank (--tag) so leftovers can be found by command line.
inline std::string unique_tag() {
  return "peerchanneltest-" + std::to_string(::getpid()) + "-" + std::to_string(std::random_device{}());
}

inline std::vector<std::string> split(const std::string& list) {
  std::vector<std::string> items;
  std::stringstream in(list);
  for (std::string item; std::getline(in, item, ',');) items.push_back(item);
  return items;
}

inline launch_test::LaunchResult run(const Job& job, const std::string& tag) {
  std::vector<std::string> args{"--nodes",          std::to_string(job.nodes),
                                "--ranks-per-node", std::to_string(job.ranks_per_node),
                                "--timeout",        "150"};
  if (job.netns) args.push_back("--netns");
  // Survivors of a killed peer ignore SIGTERM and must outlive the launcher's stop long enough to report the
  // death: on a loaded machine noticing it can take longer than the default 3 s grace.
  args.insert(args.end(), {"--grace", std::to_string(job.worker_timeout_s + 5)});
  args.insert(args.end(), {"--", PEER_CHANNEL_WORKER, job.modes, "--timeout",
                           std::to_string(job.worker_timeout_s), "--tag", tag});
  return launch_test::launch(args, 170s);
}

// Echoes the worker lines worth keeping in the test log (measurements, the seed).
inline void echo_figures(const std::string& out) {
  std::istringstream in(out);
  for (std::string line; std::getline(in, line);) {
    if (line.find("throughput") != std::string::npos || line.find("idle channel") != std::string::npos ||
        line.find("seed") != std::string::npos) {
      std::cout << line << "\n";
    }
  }
}

// Every mode must pass on every rank.
inline void expect_pass(const Job& job) {
  auto tag = unique_tag();
  auto result = run(job, tag);
  INFO(result.describe());
  echo_figures(result.out);
  CHECK(result.exit_code == 0);
  int world = job.nodes * job.ranks_per_node;
  for (const auto& mode : split(job.modes)) {
    for (int rank = 0; rank < world; ++rank) {
      INFO("rank " << rank << ", mode " << mode);
      CHECK(result.out.find("rank " + std::to_string(rank) + ": " + mode + " ok") != std::string::npos);
    }
  }
  CHECK(result.out.find("FAILED") == std::string::npos);
  CHECK(launch_test::processes_with(tag).empty());
}

// Rank 1 dies mid-stream: every survivor must report an Event error naming rank 1 (the worker checks it and
// prints "kill_peer ok"), the launcher must exit non-zero, and nothing of the job may be left running.
inline void expect_peer_death_reported(const Job& job) {
  auto tag = unique_tag();
  auto result = run(job, tag);
  INFO(result.describe());
  CHECK(result.exit_code != 0);
  CHECK(result.out.find("rank 1: dying now") != std::string::npos);
  int world = job.nodes * job.ranks_per_node;
  for (int rank = 0; rank < world; ++rank) {
    if (rank == 1) continue;
    INFO("rank " << rank);
    CHECK(result.out.find("rank " + std::to_string(rank) + ": kill_peer ok") != std::string::npos);
  }
  CHECK(result.out.find("FAILED") == std::string::npos);
  CHECK(result.seconds < job.worker_timeout_s + 40);
  CHECK(launch_test::processes_with(tag).empty());
}

}  // namespace peer_channel_test
