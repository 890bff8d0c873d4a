// A rank killed (SIGKILL) or frozen (SIGSTOP) while the others are inside a dispatch waiting for it, in every
// way a job can be started here: `ferry launch` (one node, and two nodes over loopback), Open MPI's mpirun,
// torchrun's environment set by hand, and FERRY_* set by hand. The contract (issue 24): every survivor
// fails naming the rank, reports it once, and has exited within 5 s of the kill (measured from the victim's
// last timestamp to each survivor's, both CLOCK_MONOTONIC: dispatch_rank_main.cpp prints them), with or
// without a launcher that cleans up. It used to take the bootstrap timeout (100 s by default), spent waiting
// in the teardown for the dead rank's goodbye.
//
// The survivors ignore the launchers' SIGTERM, so `ferry launch` (--grace 30) and mpirun cannot end them
// early: what is measured is ferry's own teardown. The victim lets its own puts land before it dies (UCX
// over tcp has a target-side abort when a put arrives from a peer already marked failed:
// docs/ARCHITECTURE.md, Failure handling).
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <sstream>
#include <string>
#include <vector>

#include "../integration/launch_harness.hpp"
#include "../peer/launch_run.hpp"
#include "common/loopback.hpp"
#include "common/rank_processes.hpp"
#include "common/skip.hpp"

namespace {

// The contract, measured from the kill. The CI machine is a loaded 2-core VM; 5 s is what the issue asks.
constexpr double kExitWithin = 5.0;

// The number that follows `prefix` in the line of `output` that starts with it; -1 when there is none.
double timestamp_after(const std::string& output, const std::string& prefix) {
  for (const std::string& line : launch_test::lines_starting_with(output, prefix)) {
    return std::stod(line.substr(prefix.size()));
  }
  return -1;
}

// Lines of `output` that contain `prefix` after an optional "[rN] " tag of `ferry launch`.
std::vector<std::string> rank_lines(const std::string& output, const std::string& prefix) {
  std::vector<std::string> found;
  std::istringstream in(output);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("[r", 0) == 0 && line.find("] ") != std::string::npos)
      line = line.substr(line.find("] ") + 2);
    if (line.rfind(prefix, 0) == 0) found.push_back(line);
  }
  return found;
}

// Every survivor reported the victim once, by rank, and exited within `within` seconds of its death.
void expect_survivors_ended(const std::string& output, int ranks, int victim, double within = kExitWithin) {
  INFO(output);
  const std::vector<std::string> dying = rank_lines(output, "rank " + std::to_string(victim) + ": dying at ");
  REQUIRE(dying.size() == 1);
  const double died = timestamp_after(dying[0], "rank " + std::to_string(victim) + ": dying at ");
  for (int rank = 0; rank < ranks; ++rank) {
    if (rank == victim) continue;
    INFO("rank " << rank);
    const std::string me = "rank " + std::to_string(rank) + ": ";
    const std::vector<std::string> failures = rank_lines(output, me + "failed after ");
    REQUIRE(failures.size() == 1);  // reported once
    CHECK(failures[0].find("rank " + std::to_string(victim)) != std::string::npos);
    const std::vector<std::string> exits = rank_lines(output, me + "exiting at ");
    REQUIRE(exits.size() == 1);
    const double ended = timestamp_after(exits[0], me + "exiting at ");
    std::printf("rank %d ended %.3f s after rank %d died\n", rank, ended - died, victim);
    CHECK(ended - died < within);
  }
}

std::string rank_program(int victim, const std::string& how = "--kill-rank") {
  return std::string(DISPATCH_RANK_BIN) + " --seed 7 --rounds 3 " + how + " " + std::to_string(victim);
}

// Ranks started by the test with `vars(rank)`, no launcher: their outputs, concatenated, once all ended
// (a frozen victim is killed once the others have ended or the deadline passed).
template <typename VarsOf>
std::string run_without_launcher(int ranks, int victim, const std::vector<std::string>& extra, VarsOf vars) {
  launch_test::TempDir dir;
  ferry::test::RankProcesses processes(dir.path());
  std::vector<std::string> argv{DISPATCH_RANK_BIN, "--seed", "7", "--rounds", "3"};
  argv.insert(argv.end(), extra.begin(), extra.end());
  for (int rank = 0; rank < ranks; ++rank) processes.start(argv, vars(rank));
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  std::string output;
  for (int rank = 0; rank < ranks; ++rank) {
    if (rank == victim) continue;
    const ferry::test::RankExit exit = processes.wait(static_cast<std::size_t>(rank), deadline);
    CHECK_FALSE(exit.killed_at_deadline);
    CHECK(exit.exit_code != 0);
    output += exit.output;
  }
  output += processes.wait(static_cast<std::size_t>(victim), std::chrono::steady_clock::now()).output;
  std::cout << output;
  return output;
}

std::string ferry_launch(const std::string& shape) {
  return std::string(FERRY_BIN) + " launch " + shape + " --grace 30 --timeout 120 -- ";
}

}  // namespace

TEST_CASE("a rank killed during a dispatch under ferry launch: its node's survivors end within seconds",
          "[multiprocess][failure]") {
  const auto outcome = ferry::test::run(ferry_launch("--nodes 1 --ranks-per-node 3") + rank_program(1));
  expect_survivors_ended(outcome.output, 3, 1);
}

TEST_CASE("a rank killed during a dispatch under ferry launch: survivors across nodes end within seconds",
          "[multiprocess][failure]") {
  const auto outcome = ferry::test::run(ferry_launch("--nodes 2 --ranks-per-node 2") + rank_program(3));
  expect_survivors_ended(outcome.output, 4, 3);
}

TEST_CASE("rank 0, the store's host, killed under ferry launch: the others end within seconds naming it",
          "[multiprocess][failure]") {
  const auto outcome = ferry::test::run(ferry_launch("--nodes 2 --ranks-per-node 2") + rank_program(0));
  expect_survivors_ended(outcome.output, 4, 0);
}

// Under mpirun on one box, without MASTER_ADDR/MASTER_PORT: rank 0 picks the store's port and hands it over
// (README: "Real launchers"). Without --enable-recovery mpirun would abort the job once a rank dies.
TEST_CASE("a rank killed during a dispatch under mpirun: the survivors end within seconds",
          "[multiprocess][failure]") {
  if (ferry::test::run("command -v mpirun").exit_code != 0)
    ferry::test::skip("mpirun (Open MPI) is not installed");
  const auto outcome = ferry::test::run(
      "timeout 120 mpirun --allow-run-as-root --oversubscribe --enable-recovery -np 3 " + rank_program(1));
  expect_survivors_ended(outcome.output, 3, 1);
}

// The attack of issue 24: 4 ranks started torchrun-style by hand, one killed; nothing else cleans up.
TEST_CASE("a rank killed with no launcher, torchrun's variables by hand: the survivors end within seconds",
          "[multiprocess][failure]") {
  const int master_port = ferry::test::free_loopback_port() - 1;
  const std::string output = run_without_launcher(4, 2, {"--kill-rank", "2"}, [&](int rank) {
    return ferry::test::torchrun_vars(rank, 4, 4, master_port);
  });
  expect_survivors_ended(output, 4, 2);
}

TEST_CASE("rank 0 killed with no launcher: the others end within seconds naming it",
          "[multiprocess][failure]") {
  const int master_port = ferry::test::free_loopback_port() - 1;
  const std::string output = run_without_launcher(3, 0, {"--kill-rank", "0"}, [&](int rank) {
    return ferry::test::torchrun_vars(rank, 3, 3, master_port);
  });
  expect_survivors_ended(output, 3, 0);
}

TEST_CASE("a rank killed with no launcher, FERRY_* by hand: the survivor ends within seconds",
          "[multiprocess][failure]") {
  const std::string store = "127.0.0.1:" + std::to_string(ferry::test::free_loopback_port());
  const std::string output = run_without_launcher(2, 1, {"--kill-rank", "1"}, [&](int rank) {
    return ferry::test::Vars{{"FERRY_RANK", std::to_string(rank)},
                             {"FERRY_WORLD_SIZE", "2"},
                             {"FERRY_STORE", store},
                             {"FERRY_SECRET", "a-secret-for-this-test"}};
  });
  expect_survivors_ended(output, 2, 1);
}

// A frozen rank is found by the operation timeout alone (it still holds its connections). It used to be
// reported three times over, after 3x the timeout (the operation, the teardown's barrier, rank 0's wait for
// the goodbye); now once, naming it, and every survivor has ended soon after one timeout.
TEST_CASE("a frozen rank (SIGSTOP) is reported once, naming it, after one timeout",
          "[multiprocess][failure]") {
  const int master_port = ferry::test::free_loopback_port() - 1;
  constexpr double kTimeout = 2.0;
  const std::string output =
      run_without_launcher(3, 1, {"--freeze-rank", "1", "--op-timeout", "2"},
                           [&](int rank) { return ferry::test::torchrun_vars(rank, 3, 3, master_port); });
  expect_survivors_ended(output, 3, 1, kTimeout + kExitWithin);
  // Each survivor names the frozen rank in its one report; rank 2's timeout, or the first one's report.
  CHECK(output.find("timeout") != std::string::npos);
}
