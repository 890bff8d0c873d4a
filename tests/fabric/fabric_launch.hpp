// Runs fabric_worker scenarios as whole jobs through `ferry launch` and checks what they report.
#pragma once

#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "launch_harness.hpp"

namespace fabric_test {

using launch_test::processes_with;

using namespace std::chrono_literals;

// The worker's timeout (group and fabric waits) for the kill scenarios: a job whose survivors report the
// death ends in well under a second, one that waited for the timeout takes this long.
inline constexpr int kKillTimeout = 40;

struct Job {
  int nodes = 1;
  int ranks_per_node = 2;
  bool netns = false;
  std::string scenario;
  std::string fabric = "ucx";
  int worker_timeout_s = 20;       // every fabric wait inside the worker
  std::vector<std::string> extra;  // more worker arguments
};

// A token unique to this run, passed to every rank (--tag) so leftovers can be found by command line.
inline std::string unique_tag() {
  return "fabrictest-" + std::to_string(::getpid()) + "-" + std::to_string(std::random_device{}());
}

// Runs the job; fails the test when `ferry launch` does not finish within `limit`.
inline launch_test::LaunchResult run(const Job& job, const std::string& tag,
                                     std::chrono::milliseconds limit = 90s) {
  std::vector<std::string> args{"--nodes",          std::to_string(job.nodes),
                                "--ranks-per-node", std::to_string(job.ranks_per_node),
                                "--timeout",        "80"};
  if (job.netns) args.push_back("--netns");
  // Survivors of a killed peer ignore SIGTERM and must outlive the launcher's stop long enough to report the
  // death: on a loaded machine noticing it can take longer than the default 3 s grace.
  args.insert(args.end(), {"--grace", std::to_string(job.worker_timeout_s + 5)});
  args.insert(args.end(), {"--", FABRIC_WORKER, job.scenario, "--fabric", job.fabric, "--timeout",
                           std::to_string(job.worker_timeout_s), "--tag", tag});
  args.insert(args.end(), job.extra.begin(), job.extra.end());
  return launch_test::launch(args, limit);
}

// Runs a scenario that must pass on every rank.
inline void expect_pass(const Job& job) {
  auto tag = unique_tag();
  auto result = run(job, tag);
  INFO(result.describe());
  CHECK(result.exit_code == 0);
  int world = job.nodes * job.ranks_per_node;
  for (int rank = 0; rank < world; ++rank) {
    CHECK(result.out.find("rank " + std::to_string(rank) + ": " + job.scenario + " ok") != std::string::npos);
  }
  CHECK(result.out.find("FAILED") == std::string::npos);
  CHECK(processes_with(tag).empty());
}

// Rank 1 dies mid-transfer: every survivor must report a ferry::Error naming rank 1, the launcher must exit
// non-zero, and nothing of the job may be left running.
inline void expect_peer_death_reported(const Job& job) {
  auto tag = unique_tag();
  auto result = run(job, tag);
  int world = job.nodes * job.ranks_per_node;
  for (int rank = 0; rank < world; ++rank) {
    if (rank == 1) continue;
    // The survivor noticed either mid-transfer ("fabric error after ...") or, when the victim died before
    // it reached the transfer loop, in an earlier fabric call (the worker's "FAILED: ..." line). Either way
    // the message must be a peer failure that names rank 1 -- or names another survivor that had itself
    // reported rank 1's death and left: a fabric cannot tell which of two peers gone within a moment went
    // first (on another node, a survivor's exit can be seen before the victim's). Naming the first failure
    // of the job is the store's work, tested at the group level (tests/dispatch/test_rank_death.cpp).
    const std::string all_output = result.out + "\n" + result.err;
    auto gone_survivor_named = [&](const std::string& line) {
      for (int other = 0; other < world; ++other) {
        if (other == 1 || other == rank) continue;
        const std::string name = "connection to rank " + std::to_string(other) + " ";
        const std::string left = "rank " + std::to_string(other) + ": fabric error after";
        if (line.find(name) != std::string::npos && all_output.find(left) != std::string::npos) return true;
      }
      return false;
    };
    auto lines = launch_test::lines_starting_with(all_output, "[r" + std::to_string(rank) + "] ");
    bool reported = false;
    std::string printed;
    for (const auto& line : lines) {
      printed += "\n  " + line;
      reported = reported || (line.find("peer failure") != std::string::npos &&
                              (line.find("rank 1") != std::string::npos || gone_survivor_named(line)));
    }
    // This rank's own lines first: the whole job's output follows and may be cut short in a CI log.
    INFO("rank " << rank << " printed:" << (printed.empty() ? std::string(" nothing") : printed));
    CHECK(reported);
  }
  INFO(result.describe());
  CHECK(result.exit_code != 0);
  CHECK(result.out.find("rank 1: dying now") != std::string::npos);
  CHECK(result.seconds < job.worker_timeout_s + 30);
  if (job.ranks_per_node >= 2) {
    // The victim shares rank 0's node, so rank 0 (hosting the store) sees its process gone and does not wait
    // the group timeout for it to check out. Callers give a group timeout (kKillTimeout) far longer than the
    // job takes on a loaded machine, so waiting for it stands out.
    CHECK(result.seconds < job.worker_timeout_s);
  }
  CHECK(processes_with(tag).empty());
}

}  // namespace fabric_test
