// Shared by the launch tests: run the dispatch rank program under `ferry launch` with a printed seed and
// expect every rank to report its results verified.
#pragma once

#include <catch2/catch.hpp>
#include <cstdio>
#include <string>

#include "../peer/launch_run.hpp"
#include "reference.hpp"

namespace ferry::test {

inline void launch_and_verify(const std::string& launch_options, int ranks) {
  unsigned long long seed = test_seed();
  std::printf("launch: seed %llu (set FERRY_TEST_SEED to repeat)\n", seed);
  Outcome outcome = run(std::string(FERRY_BIN) + " launch " + launch_options + " --timeout 180 -- " +
                        DISPATCH_RANK_BIN + " --seed " + std::to_string(seed));
  CHECK(outcome.exit_code == 0);
  for (int rank = 0; rank < ranks; ++rank) {
    CHECK_THAT(outcome.output, Catch::Matchers::Contains("rank " + std::to_string(rank) + ": verified"));
  }
}

}  // namespace ferry::test
