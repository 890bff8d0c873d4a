// Lines of (x, y) points on linear axes starting at zero, with a legend and one highlighted point: the
// sweep plot of `ferry bench dispatch|combine --sweep` (GB/s against num_sms, one line per chunk setting).
//
// Marks a test can find: <polyline class="series" data-series="NAME">, one <circle class="point"
// data-series data-x data-y> per point, and <circle class="best"> on the highlighted one.
#pragma once

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "plot/svg.hpp"

namespace ferry::tools::plot {

struct Series {
  std::string name;
  std::vector<std::pair<double, double>> points;  // drawn in this order
};

struct ChartOptions {
  std::string title;
  std::string x_label;
  std::string y_label;
  std::optional<std::pair<double, double>> highlight;
  std::string highlight_label;
};

SvgDocument line_chart(const std::vector<Series>& series, const ChartOptions& options);

}  // namespace ferry::tools::plot
