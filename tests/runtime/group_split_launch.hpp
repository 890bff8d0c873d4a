// Shared by the Group::split launch tests: run the split worker under `ferry launch` and expect every rank to
// report its sub-group (with the expected job id) and the parent verified.
#pragma once

#include <catch2/catch.hpp>
#include <cstdio>
#include <regex>
#include <string>
#include <vector>

#include "../dispatch/reference.hpp"
#include "../peer/launch_run.hpp"

namespace ferry::test {

struct ExpectedSub {
  std::string name;  // the sub-group's name (its job id is "<launcher's job id>.<name>")
  int rank;          // the sub-rank
  int size;          // members
};

// expected[r]: what rank r must report.
inline void launch_split(const std::string& launch_options, const std::string& split,
                         const std::vector<ExpectedSub>& expected) {
  const unsigned long long seed = test_seed();
  std::printf("split launch: seed %llu (set FERRY_TEST_SEED to repeat)\n", seed);
  Outcome outcome = run(std::string(FERRY_BIN) + " launch " + launch_options + " --timeout 180 -- " +
                        GROUP_SPLIT_WORKER_BIN + " --split " + split + " --seed " + std::to_string(seed));
  CHECK(outcome.exit_code == 0);
  for (std::size_t rank = 0; rank < expected.size(); ++rank) {
    const ExpectedSub& sub = expected[rank];
    const std::string line = "rank " + std::to_string(rank) + ": verified [^ \\n]+\\." + sub.name +
                             " \\(sub-rank " + std::to_string(sub.rank) + " of " + std::to_string(sub.size) +
                             "\\) and the parent";
    INFO("expected a line matching " << line);
    CHECK(std::regex_search(outcome.output, std::regex(line)));
  }
}

}  // namespace ferry::test
