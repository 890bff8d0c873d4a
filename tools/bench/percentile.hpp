// Percentiles of a benchmark's samples (nearest rank on the sorted values, rounded): p50 and p99 of the
// low-latency benchmarks, host and GPU.
#pragma once

#include <algorithm>
#include <cstddef>
#include <vector>

namespace ferry::bench {

inline double percentile(std::vector<double> values, double fraction) {
  if (values.empty()) return 0;
  std::sort(values.begin(), values.end());
  const auto index = static_cast<std::size_t>(fraction * static_cast<double>(values.size() - 1) + 0.5);
  return values[std::min(index, values.size() - 1)];
}

}  // namespace ferry::bench
