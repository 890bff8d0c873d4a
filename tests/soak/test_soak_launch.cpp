// Soak under `ferry launch` (2 nodes x 2 ranks, shm within a node, UCX over TCP between): random small
// dispatch + combine rounds, every result checked on every rank, each rank's resident memory and open
// descriptors and rank 0's store the same after the rounds as before them.
#include <catch2/catch.hpp>
#include <cstdio>
#include <string>

#include "../dispatch/reference.hpp"
#include "../peer/launch_run.hpp"
#include "process_usage.hpp"

TEST_CASE("soak launch: random dispatch/combine rounds on 2x2 keep every rank's memory and descriptors flat",
          "[soak][multiprocess]") {
  const unsigned long long seed = ferry::test::test_seed();
  std::printf("soak launch: seed %llu (set FERRY_TEST_SEED to repeat)\n", seed);
  const int rounds = ferry::test::soak_rounds(ferry::test::kSanitized ? 40 : 500);
  auto outcome = ferry::test::run(std::string(FERRY_BIN) +
                                  " launch --nodes 2 --ranks-per-node 2 --timeout 300 -- " + SOAK_RANK_BIN +
                                  " --seed " + std::to_string(seed) + " --rounds " + std::to_string(rounds));
  CHECK(outcome.exit_code == 0);
  for (int rank = 0; rank < 4; ++rank) {
    CHECK_THAT(outcome.output, Catch::Contains("rank " + std::to_string(rank) + ": soak " +
                                               std::to_string(rounds) + " rounds"));
  }
  CHECK_THAT(outcome.output, Catch::Contains("store "));
}
