// The main of every test executable (ferry_add_test): Catch2's session with two warnings always on, so that a
// test case cannot pass by accident:
//  - NoAssertions: a test case, or a leaf section, that ran no assertion fails (one that returned early,
//  say);
//  - NoTests: a test spec that matches no test case fails. ctest runs each test case by name, and a name that
//    no longer matches (a ';' in it splits it into two names, a CMake list) otherwise "passes" running
//    nothing.
// Compiled once (it carries Catch2's implementation).
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

int main(int argc, char** argv) {
  Catch::Session session;
  if (const int error = session.applyCommandLine(argc, argv); error != 0) return error;
  Catch::ConfigData& config = session.configData();
  config.warnings = static_cast<Catch::WarnAbout::What>(config.warnings | Catch::WarnAbout::NoAssertions |
                                                        Catch::WarnAbout::NoTests);
  return session.run();
}
