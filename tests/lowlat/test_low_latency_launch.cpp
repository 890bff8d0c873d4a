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

// A dead rank is masked by every survivor well before the timeout (3 s): the store names it to all of them.
// The survivors ignore the SIGTERM `ferry launch` sends when a rank dies; --grace keeps them alive to finish.
TEST_CASE("low-latency: a rank killed between operations is masked by the others, who go on",
          "[multiprocess]") {
  const Outcome outcome = launch("--nodes 1 --ranks-per-node 3", "--scenario kill --victim 1", "--grace 30");
  CHECK_THAT(outcome.output, Catch::Matchers::Contains("rank 1: dying now"));
  expect_lines(outcome, 3, "went on without rank 1", 1);
  CHECK_THAT(outcome.output, !Catch::Matchers::Contains("FAILED"));
}

// Across nodes the fabric gives the dead rank up alone (ucx isolation) and the store names it: the other
// node's survivors and the victim's own node mask it within moments, every result checked with it left out.
// --keep-going: the launcher lets the survivors run on.
TEST_CASE("low-latency: a rank of another node killed between operations is masked by every survivor",
          "[multiprocess]") {
  const Outcome outcome =
      launch("--nodes 2 --ranks-per-node 2", "--scenario kill --victim 3", "--keep-going --grace 30");
  CHECK_THAT(outcome.output, Catch::Matchers::Contains("rank 3: dying now"));
  expect_lines(outcome, 4, "went on without rank 3", 3);
  CHECK_THAT(outcome.output, !Catch::Matchers::Contains("FAILED"));
  // Each survivor also left cleanly (the launcher names every rank that exits non-zero under --keep-going).
  for (int rank = 0; rank < 3; ++rank)
    CHECK_THAT(outcome.output, !Catch::Matchers::Contains("rank " + std::to_string(rank) + " exited with"));
}

// A buffer on a sub-group (here 2 x 2 of a 2 x 3 job, every node's last rank left out) hears of its dead from
// the store too: the store counts a sub-group's lost ranks in the sub-group's numbering, and the sub-group's
// own watch follows them. Without it the survivors mask the victim only after the 3 s timeout, which the
// scenario refuses.
TEST_CASE("low-latency on a sub-group: a rank of another node killed is masked by every survivor",
          "[multiprocess]") {
  const Outcome outcome = launch("--nodes 2 --ranks-per-node 3", "--scenario kill --victim 3 --sub-group 1",
                                 "--keep-going --grace 30");
  CHECK_THAT(outcome.output, Catch::Matchers::Contains("job rank 2: not a member"));
  CHECK_THAT(outcome.output, Catch::Matchers::Contains("job rank 5: not a member"));
  CHECK_THAT(outcome.output, Catch::Matchers::Contains("rank 3: dying now"));
  expect_lines(outcome, 4, "went on without rank 3", 3);
  CHECK_THAT(outcome.output, !Catch::Matchers::Contains("FAILED"));
  // Only the victim (job rank 4) ends otherwise than cleanly, members and non-members alike.
  for (int rank : {0, 1, 2, 3, 5})
    CHECK_THAT(outcome.output, !Catch::Matchers::Contains("rank " + std::to_string(rank) + " exited with"));
  CHECK_THAT(outcome.output, Catch::Matchers::Contains("rank 4 exited with signal SIGKILL"));
}
