// Reporting a test that cannot run here as skipped, not passed.
//
// ctest treats exit code 77 as "skipped" (every test registered through ferry_add_test sets SKIP_RETURN_CODE
// 77), and catch_discover_tests runs each TEST_CASE as its own process, so a test case that cannot run prints
// why and leaves with 77 at once. Catch2 2.x has no skip of its own: a warning followed by `return` would be
// counted as a pass.
#pragma once

#include <cstdio>
#include <cstdlib>
#include <string>

namespace ferry::test {

inline constexpr int kSkipExitCode = 77;

[[noreturn]] inline void skip(const std::string& reason) {
  std::printf("SKIPPED: %s\n", reason.c_str());
  std::fflush(nullptr);
  // _Exit: no static destructors and no leak check run under a test case that is still in progress.
  std::_Exit(kSkipExitCode);
}

}  // namespace ferry::test
