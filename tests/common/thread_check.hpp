// Checks on a thread other than the test's main one. Catch2 v2's assertions are for the main thread only, so
// a rank's thread throws what went wrong instead, and the harness that runs the ranks (run_ranks) rethrows it
// on the main thread, where Catch2 reports it as the test's failure.
#pragma once

#include <stdexcept>
#include <string>

namespace ferry::test {

inline void expect(bool condition, const std::string& what) {
  if (!condition) throw std::runtime_error(what);
}

}  // namespace ferry::test

// expect() with the rank and the condition's text as the message.
#define FERRY_EXPECT_ON_RANK(group, condition) \
  ::ferry::test::expect((condition), "rank " + std::to_string((group).rank()) + ": failed " #condition)
