// Finite-difference gradient checking in double, shared by the model's tests.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <functional>
#include <vector>

#include "ferry/model/rng.hpp"

namespace ferry::model::testing {

// Relative error every gradient check must meet: central differences in double with eps 1e-5 are exact to
// about 1e-9 relative on these smooth, tiny problems, so a wrong term in a backward pass shows up as O(1).
inline constexpr double kGradTolerance = 1e-6;

inline std::vector<double> random_vector(std::size_t n, Rng& rng, double scale = 1.0) {
  std::vector<double> v(n);
  for (double& x : v) x = (2 * rng.uniform() - 1) * scale;
  return v;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

struct GradCheck {
  double relative_error = 0;  // ||analytic - numeric|| / max(||analytic||, ||numeric||)
  double numeric_norm = 0;    // > 0, or the check proved nothing
  std::size_t checked = 0;
};

// Compares analytic[i] = ∂f/∂x[i] with central differences of f over x (at most max_coords coordinates,
// evenly strided). f reads x; x is restored after each probe.
inline GradCheck check_gradient(double* x, std::size_t n, const double* analytic,
                                const std::function<double()>& f, double eps = 1e-5,
                                std::size_t max_coords = 2048) {
  const std::size_t stride = std::max<std::size_t>(1, n / max_coords);
  double diff_sq = 0, num_sq = 0, ana_sq = 0;
  GradCheck result;
  for (std::size_t i = 0; i < n; i += stride) {
    const double saved = x[i];
    x[i] = saved + eps;
    const double plus = f();
    x[i] = saved - eps;
    const double minus = f();
    x[i] = saved;
    const double numeric = (plus - minus) / (2 * eps);
    diff_sq += (numeric - analytic[i]) * (numeric - analytic[i]);
    num_sq += numeric * numeric;
    ana_sq += analytic[i] * analytic[i];
    ++result.checked;
  }
  const double scale = std::max(std::sqrt(num_sq), std::sqrt(ana_sq));
  result.numeric_norm = std::sqrt(num_sq);
  result.relative_error = scale > 0 ? std::sqrt(diff_sq) / scale : 0;
  return result;
}

inline GradCheck check_gradient(std::vector<double>& x, const std::vector<double>& analytic,
                                const std::function<double()>& f, double eps = 1e-5) {
  return check_gradient(x.data(), x.size(), analytic.data(), f, eps);
}

}  // namespace ferry::model::testing
