// Shared by the Group::split launch tests: run the split worker under `ferry launch` and expect every rank to
// report its sub-group (with the expected job id) and the parent verified.
#pragma once

#include <catch2/catch.hpp>
#include <cstdio>
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
    // "rank R: verified <job id>.<name> (sub-rank S of Z) and the parent"
    const std::string head = "rank " + std::to_string(rank) + ": verified ";
    const std::string tail =
        " (sub-rank " + std::to_string(sub.rank) + " of " + std::to_string(sub.size) + ") and the parent";
    bool found = false;
    for (std::size_t at = outcome.output.find(head); at != std::string::npos && !found;
         at = outcome.output.find(head, at + 1)) {
      const std::size_t id_start = at + head.size();
      const std::size_t id_end = outcome.output.find_first_of(" \n", id_start);
      if (id_end == std::string::npos) break;
      const std::string id = outcome.output.substr(id_start, id_end - id_start);
      const std::string suffix = "." + sub.name;
      found = id.size() > suffix.size() &&
              id.compare(id.size() - suffix.size(), suffix.size(), suffix) == 0 &&
              outcome.output.compare(id_end, tail.size(), tail) == 0;
    }
    INFO("expected a line " << head << "<job id>." << sub.name << tail);
    CHECK(found);
  }
}

}  // namespace ferry::test
