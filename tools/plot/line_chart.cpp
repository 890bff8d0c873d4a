#include "plot/line_chart.hpp"

#include <algorithm>
#include <cmath>

namespace ferry::tools::plot {
namespace {

// A round step giving about `ticks` intervals up to `max` (1, 2 or 5 times a power of ten).
double nice_step(double max, int ticks) {
  if (!(max > 0)) return 1;
  const double raw = max / ticks;
  const double power = std::pow(10.0, std::floor(std::log10(raw)));
  for (double factor : {1.0, 2.0, 5.0, 10.0}) {
    if (raw <= factor * power) return factor * power;
  }
  return 10 * power;
}

int decimals_for(double step) {
  return step >= 1 ? 0 : static_cast<int>(std::ceil(-std::log10(step)));
}

}  // namespace

SvgDocument line_chart(const std::vector<Series>& series, const ChartOptions& options) {
  const double width = 760, height = 440, left = 70, right = 230, top = 50, bottom = 60;
  const double plot_w = width - left - right, plot_h = height - top - bottom;
  double max_x = 0, max_y = 0;
  for (const auto& s : series) {
    for (const auto& [x, y] : s.points) {
      max_x = std::max(max_x, x);
      max_y = std::max(max_y, y);
    }
  }
  const double x_step = nice_step(max_x, 6), y_step = nice_step(max_y, 5);
  const double x_end = std::max(x_step, std::ceil(max_x / x_step) * x_step);
  const double y_end = std::max(y_step, std::ceil(max_y / y_step) * y_step);
  auto px = [&](double x) { return left + x / x_end * plot_w; };
  auto py = [&](double y) { return top + plot_h - y / y_end * plot_h; };

  SvgDocument svg(width, height);
  svg.title(options.title);
  for (double y = 0; y <= y_end + y_step / 2; y += y_step) {
    svg.line(left, py(y), left + plot_w, py(y), {{"stroke", "#e0e0e0"}});
    svg.text(left - 6, py(y) + 4, format_number(y, decimals_for(y_step)), {{"text-anchor", "end"}});
  }
  for (double x = 0; x <= x_end + x_step / 2; x += x_step) {
    svg.line(px(x), top + plot_h, px(x), top + plot_h + 4, {{"stroke", "black"}});
    svg.text(px(x), top + plot_h + 18, format_number(x, decimals_for(x_step)), {{"text-anchor", "middle"}});
  }
  svg.line(left, top + plot_h, left + plot_w, top + plot_h, {{"stroke", "black"}});
  svg.line(left, top, left, top + plot_h, {{"stroke", "black"}});
  svg.text(left + plot_w / 2, height - 16, options.x_label, {{"text-anchor", "middle"}});
  svg.text(18, top + plot_h / 2, options.y_label,
           {{"text-anchor", "middle"},
            {"transform", "rotate(-90 18 " + format_number(top + plot_h / 2, 1) + ")"}});

  for (std::size_t i = 0; i < series.size(); ++i) {
    const auto& s = series[i];
    const std::string color = series_color(i);
    std::vector<std::pair<double, double>> points;
    for (const auto& [x, y] : s.points) points.emplace_back(px(x), py(y));
    svg.polyline(points,
                 {{"class", "series"}, {"data-series", s.name}, {"stroke", color}, {"stroke-width", "2"}});
    for (const auto& [x, y] : s.points) {
      svg.circle(px(x), py(y), 3.5,
                 {{"class", "point"},
                  {"data-series", s.name},
                  {"data-x", format_number(x, 3)},
                  {"data-y", format_number(y, 4)},
                  {"fill", color}});
    }
    const double legend_y = top + 16 + 18 * static_cast<double>(i);
    svg.line(width - right + 14, legend_y - 4, width - right + 34, legend_y - 4,
             {{"stroke", color}, {"stroke-width", "2"}});
    svg.text(width - right + 40, legend_y, s.name, {{"font-size", "11"}});
  }
  if (options.highlight) {
    // Circled on the plot; said in words under the legend, where it cannot cover a line.
    const auto [x, y] = *options.highlight;
    svg.circle(px(x), py(y), 8,
               {{"class", "best"}, {"fill", "none"}, {"stroke", "black"}, {"stroke-width", "2"}});
    const double label_y = top + 16 + 18 * static_cast<double>(series.size()) + 10;
    svg.circle(width - right + 24, label_y - 4, 6,
               {{"fill", "none"}, {"stroke", "black"}, {"stroke-width", "2"}});
    svg.text(width - right + 40, label_y, options.highlight_label,
             {{"class", "best-label"}, {"font-size", "11"}});
  }
  return svg;
}

}  // namespace ferry::tools::plot
