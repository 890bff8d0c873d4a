// What the trainer's multi-process tests compare: `ferry train --json` logs and checkpoints of two runs.
#pragma once

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstddef>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ferry::test {

inline nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  return nlohmann::json::parse(in);
}

// |a - b| relative to the larger magnitude; 0 when both are 0.
inline double relative_difference(double a, double b) {
  const double scale = std::max(std::abs(a), std::abs(b));
  return scale == 0 ? 0 : std::abs(a - b) / scale;
}

// Σ (a - b)² and Σ b² over slices of two flat arrays (b is the reference), in double.
struct L2Diff {
  double diff = 0, norm = 0;
  void add(const std::vector<float>& a, const std::vector<float>& b, std::size_t offset, std::size_t size) {
    for (std::size_t i = offset; i < offset + size; ++i) {
      diff += (static_cast<double>(a[i]) - b[i]) * (static_cast<double>(a[i]) - b[i]);
      norm += static_cast<double>(b[i]) * b[i];
    }
  }
  double relative() const { return norm == 0 ? std::sqrt(diff) : std::sqrt(diff / norm); }
};

}  // namespace ferry::test
