// Dispatch and combine across processes through `ferry launch` (the rank side is dispatch_rank_main.cpp): shm
// peer memory inside a node, the proxy and the fabric between nodes, every result checked on its rank.
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
void expect_death_reported(const std::string& shape, int ranks, int victim) {
  using namespace ferry::test;
  const std::string command = std::string(FERRY_BIN) + " launch " + shape + " --grace 30 --timeout 120 -- " +
                              DISPATCH_RANK_BIN + " --seed 7 --rounds 3 --kill-rank " +
                              std::to_string(victim);
  Outcome outcome = run(command);
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

TEST_CASE("a rank killed during a dispatch is reported by its node's ranks within seconds",
          "[multiprocess]") {
  expect_death_reported("--nodes 1 --ranks-per-node 3", 3, 1);
}

TEST_CASE("a rank killed during a dispatch is reported across nodes within seconds", "[multiprocess]") {
  expect_death_reported("--nodes 2 --ranks-per-node 2", 4, 3);
}
