// The low-latency mode across processes through `ferry launch` (the rank side is lowlat_rank_main.cpp): shm
// peer memory inside a node, the proxy and the fabric between nodes, every result checked on its rank.
#include <catch2/catch.hpp>
#include <string>

#include "dispatch/reference.hpp"
#include "peer/launch_run.hpp"

namespace {

using ferry::test::Outcome;

Outcome launch(const std::string& shape, const std::string& arguments, const std::string& extra = "") {
  const unsigned long long seed = ferry::test::test_seed();
  std::printf("low-latency launch: seed %llu (set FERRY_TEST_SEED to repeat)\n", seed);
  std::fflush(stdout);
  return ferry::test::run(std::string(FERRY_BIN) + " launch " + shape + " --timeout 120 " + extra + " -- " +
                          LOWLAT_RANK_BIN + " --seed " + std::to_string(seed) + " " + arguments);
}

void expect_lines(const Outcome& outcome, int ranks, const std::string& what, int skip = -1) {
  for (int rank = 0; rank < ranks; ++rank) {
    if (rank == skip) continue;
    CHECK_THAT(outcome.output,
               Catch::Matchers::Contains("rank " + std::to_string(rank) + ": " + what + " ok"));
  }
}

}  // namespace

TEST_CASE("low-latency dispatch and combine across 2 nodes x 2 processes", "[multiprocess]") {
  const Outcome outcome = launch("--nodes 2 --ranks-per-node 2", "--scenario verify --rounds 6");
  CHECK(outcome.exit_code == 0);
  expect_lines(outcome, 4, "verified 6 rounds");
}

TEST_CASE("low-latency: every rank masked in turn across 2 nodes x 2 processes, back after a clean",
          "[multiprocess]") {
  const Outcome outcome = launch("--nodes 2 --ranks-per-node 2", "--scenario masked");
  CHECK(outcome.exit_code == 0);
  expect_lines(outcome, 4, "masked in turn");
}

// Within a node a dead rank is only silent: the others mask it after the timeout (1 s) and decode on. The
// survivors ignore the SIGTERM `ferry launch` sends when a rank dies; --grace keeps them alive to finish.
TEST_CASE("low-latency: a rank killed between operations is masked by the others, who go on",
          "[multiprocess]") {
  const Outcome outcome = launch("--nodes 1 --ranks-per-node 3", "--scenario kill --victim 1", "--grace 30");
  CHECK_THAT(outcome.output, Catch::Matchers::Contains("rank 1: dying now"));
  expect_lines(outcome, 3, "went on without rank 1", 1);
}

// A rank of node 1 dies: masking it is not done (docs/reliability.md, "A dead rank in the low-latency mode"),
// so the other node's survivors must fail by name -- a peer failure naming rank 3, never a wrong result and
// never a hang. --keep-going: the launcher lets them run into the failure themselves.
TEST_CASE("low-latency: a rank of another node killed between operations fails the others by name",
          "[multiprocess]") {
  const Outcome outcome =
      launch("--nodes 2 --ranks-per-node 2", "--scenario kill --victim 3", "--keep-going");
  CHECK(outcome.exit_code != 0);
  CHECK_THAT(outcome.output, Catch::Matchers::Contains("rank 3: dying now"));
  for (int rank : {0, 1}) {
    INFO("rank " << rank);
    const std::string prefix = "rank " + std::to_string(rank) + ": FAILED: ";
    const auto at = outcome.output.find(prefix);
    REQUIRE(at != std::string::npos);
    const std::string line = outcome.output.substr(at, outcome.output.find('\n', at) - at);
    CHECK_THAT(line, Catch::Matchers::Contains("rank 3"));
    CHECK_THAT(outcome.output, !Catch::Matchers::Contains("rank " + std::to_string(rank) + ": went on"));
  }
}
