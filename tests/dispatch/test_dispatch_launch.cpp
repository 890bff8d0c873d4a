// Dispatch and combine across processes through `ferry launch` (the rank side is dispatch_rank_main.cpp): shm
// peer memory inside a node, the proxy and the fabric between nodes, every result checked on its rank.
#include "common/loopback.hpp"
#include "common/skip.hpp"
#include "launch_common.hpp"

TEST_CASE("dispatch and combine across 2 nodes x 2 processes", "[multiprocess]") {
  ferry::test::launch_and_verify("--nodes 2 --ranks-per-node 2", 4);
}

TEST_CASE("dispatch and combine across 3 processes of one node", "[multiprocess]") {
  ferry::test::launch_and_verify("--nodes 1 --ranks-per-node 3", 3);
}

namespace {

// A rank killed (SIGKILL) while the others are inside a dispatch waiting for it: every survivor fails with a
// peer failure that names it, within seconds (the operation timeout is 60 s): its node's ranks through the
// pid check the executor makes while it waits, the other nodes' through the fabric.
// `launcher` runs the rank program with the arguments appended.
void expect_death_reported(const std::string& launcher, int ranks, int victim) {
  using namespace ferry::test;
  Outcome outcome =
      run(launcher + " " + DISPATCH_RANK_BIN + " --seed 7 --rounds 3 --kill-rank " + std::to_string(victim));
  INFO(outcome.output);
  CHECK(outcome.output.find("rank " + std::to_string(victim) + ": dying now") != std::string::npos);
  for (int rank = 0; rank < ranks; ++rank) {
    if (rank == victim) continue;
    const std::string prefix = "rank " + std::to_string(rank) + ": failed after ";
    const std::size_t at = outcome.output.find(prefix);
    INFO("rank " << rank);
    REQUIRE(at != std::string::npos);
    const std::string line = outcome.output.substr(at, outcome.output.find('\n', at) - at);
    INFO(line);
    CHECK(std::stod(line.substr(prefix.size())) < 10.0);
    CHECK(line.find("peer failure") != std::string::npos);
    CHECK(line.find("rank " + std::to_string(victim)) != std::string::npos);
  }
}

}  // namespace

std::string ferry_launch(const std::string& shape) {
  return std::string(FERRY_BIN) + " launch " + shape + " --grace 30 --timeout 120 --";
}

TEST_CASE("a rank killed during a dispatch is reported by its node's ranks within seconds",
          "[multiprocess]") {
  expect_death_reported(ferry_launch("--nodes 1 --ranks-per-node 3"), 3, 1);
}

TEST_CASE("a rank killed during a dispatch is reported across nodes within seconds", "[multiprocess]") {
  expect_death_reported(ferry_launch("--nodes 2 --ranks-per-node 2"), 4, 3);
}

// The same under Open MPI's mpirun on one box (README: "Real launchers"). Without --enable-recovery mpirun
// aborts the job once a rank dies; the survivors have reported by then in every run seen (0.35 s), but the
// test must not race it.
TEST_CASE("a rank killed during a dispatch under mpirun is reported by the survivors within seconds",
          "[multiprocess]") {
  if (ferry::test::run("command -v mpirun").exit_code != 0)
    ferry::test::skip("mpirun (Open MPI) is not installed");
  const int store_port = ferry::test::free_loopback_port();  // rank 0's store listens on MASTER_PORT + 1
  expect_death_reported("MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(store_port - 1) +
                            " timeout 120 mpirun --allow-run-as-root --oversubscribe --enable-recovery"
                            " -x MASTER_ADDR -x MASTER_PORT -np 3",
                        3, 1);
}
