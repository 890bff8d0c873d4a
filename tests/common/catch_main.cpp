// The main of every test executable (ferry_add_test): Catch2's session with two warnings always on, so that a
// test case cannot pass by accident:
//  - NoAssertions: a test case, or a leaf section, that ran no assertion fails (one that returned early,
//  say);
//  - NoTests: a test spec that matches no test case fails. ctest runs each test case by name, and a name that
//    no longer matches (a ';' in it splits it into two names, a CMake list) otherwise "passes" running
//    nothing.
// Compiled once (it carries Catch2's implementation).
#define CATCH_CONFIG_RUNNER
// Catch2's implementation uses std::regex, whose libstdc++ 12 code GCC reports as maybe-uninitialized under
// -fsanitize=address (a false positive inside <regex>, not in ferry's code): kept out of the sanitizer
// builds' output.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <catch2/catch.hpp>
#pragma GCC diagnostic pop

int main(int argc, char** argv) {
  Catch::Session session;
  if (const int error = session.applyCommandLine(argc, argv); error != 0) return error;
  Catch::ConfigData& config = session.configData();
  config.warnings = static_cast<Catch::WarnAbout::What>(config.warnings | Catch::WarnAbout::NoAssertions |
                                                        Catch::WarnAbout::NoTests);
  return session.run();
}
