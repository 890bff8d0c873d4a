// A small SVG writer for the probes' figures (fabric heatmap, sweep plot): elements are appended as text,
// every attribute value and text escaped, numbers printed with a fixed precision so that files diff well.
#pragma once

#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace ferry::tools::plot {

std::string xml_escape(std::string_view text);

// A colour from red (0) through yellow (0.5) to green (1); t is clamped to [0, 1].
std::string heat_color(double t);

// A fixed palette for line series (cycles).
const char* series_color(std::size_t index);

using Attributes = std::vector<std::pair<std::string, std::string>>;

class SvgDocument {
 public:
  SvgDocument(double width, double height);

  void rect(double x, double y, double width, double height, const Attributes& attributes);
  void line(double x1, double y1, double x2, double y2, const Attributes& attributes);
  void circle(double cx, double cy, double r, const Attributes& attributes);
  void polyline(const std::vector<std::pair<double, double>>& points, const Attributes& attributes);
  void text(double x, double y, std::string_view content, const Attributes& attributes);
  // <title> of the drawing (what viewers show as its name) and a visible heading.
  void title(std::string_view text);

  std::string str() const;  // the whole document, <?xml ...?> to </svg>
  // Writes str() to `path`; throws Errc::system naming the file.
  void save(const std::string& path) const;

 private:
  double width_, height_;
  std::string body_;
};

std::string format_number(double value, int decimals);

}  // namespace ferry::tools::plot
