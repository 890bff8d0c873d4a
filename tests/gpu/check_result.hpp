// What a collective GPU check of the public API reports (buffer_checks.hpp, low_latency_buffer_checks.hpp).
#pragma once

#include <string>

namespace ferry::test {

struct GpuCheckResult {
  std::string failure;  // "" when every check passed, else the first difference (rank, round, what)
  int checks = 0;       // comparisons made
};

}  // namespace ferry::test
