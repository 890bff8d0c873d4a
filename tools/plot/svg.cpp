#include "plot/svg.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "ferry/core/error.hpp"

namespace ferry::tools::plot {
namespace {

std::string attribute_text(const Attributes& attributes) {
  std::string out;
  for (const auto& [name, value] : attributes) out += " " + name + "=\"" + xml_escape(value) + "\"";
  return out;
}

}  // namespace

std::string xml_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        out += c;
    }
  }
  return out;
}

std::string format_number(double value, int decimals) {
  char text[64];
  std::snprintf(text, sizeof text, "%.*f", decimals, value);
  return text;
}

std::string heat_color(double t) {
  t = std::isfinite(t) ? std::clamp(t, 0.0, 1.0) : 0.0;
  // Red (215, 48, 39) -> yellow (254, 224, 139) -> green (26, 152, 80): ColorBrewer's RdYlGn ends and middle.
  const double low[3] = {215, 48, 39}, mid[3] = {254, 224, 139}, high[3] = {26, 152, 80};
  const double* from = t < 0.5 ? low : mid;
  const double* to = t < 0.5 ? mid : high;
  const double u = t < 0.5 ? t * 2 : (t - 0.5) * 2;
  char text[8];
  std::snprintf(text, sizeof text, "#%02x%02x%02x",
                static_cast<int>(std::lround(from[0] + (to[0] - from[0]) * u)),
                static_cast<int>(std::lround(from[1] + (to[1] - from[1]) * u)),
                static_cast<int>(std::lround(from[2] + (to[2] - from[2]) * u)));
  return text;
}

const char* series_color(std::size_t index) {
  static const char* palette[] = {"#1f77b4", "#d62728", "#2ca02c", "#9467bd",
                                  "#ff7f0e", "#8c564b", "#e377c2", "#17becf"};
  return palette[index % (sizeof palette / sizeof palette[0])];
}

SvgDocument::SvgDocument(double width, double height) : width_(width), height_(height) {}

void SvgDocument::rect(double x, double y, double width, double height, const Attributes& attributes) {
  body_ += "<rect x=\"" + format_number(x, 1) + "\" y=\"" + format_number(y, 1) + "\" width=\"" +
           format_number(width, 1) + "\" height=\"" + format_number(height, 1) + "\"" +
           attribute_text(attributes) + "/>\n";
}

void SvgDocument::line(double x1, double y1, double x2, double y2, const Attributes& attributes) {
  body_ += "<line x1=\"" + format_number(x1, 1) + "\" y1=\"" + format_number(y1, 1) + "\" x2=\"" +
           format_number(x2, 1) + "\" y2=\"" + format_number(y2, 1) + "\"" + attribute_text(attributes) +
           "/>\n";
}

void SvgDocument::circle(double cx, double cy, double r, const Attributes& attributes) {
  body_ += "<circle cx=\"" + format_number(cx, 1) + "\" cy=\"" + format_number(cy, 1) + "\" r=\"" +
           format_number(r, 1) + "\"" + attribute_text(attributes) + "/>\n";
}

void SvgDocument::polyline(const std::vector<std::pair<double, double>>& points,
                           const Attributes& attributes) {
  std::string list;
  for (const auto& [x, y] : points)
    list += (list.empty() ? "" : " ") + format_number(x, 1) + "," + format_number(y, 1);
  body_ += "<polyline points=\"" + list + "\" fill=\"none\"" + attribute_text(attributes) + "/>\n";
}

void SvgDocument::text(double x, double y, std::string_view content, const Attributes& attributes) {
  body_ += "<text x=\"" + format_number(x, 1) + "\" y=\"" + format_number(y, 1) + "\"" +
           attribute_text(attributes) + ">" + xml_escape(content) + "</text>\n";
}

void SvgDocument::title(std::string_view text) {
  body_ += "<title>" + xml_escape(text) + "</title>\n";
  this->text(width_ / 2, 24, text, {{"class", "heading"}, {"text-anchor", "middle"}, {"font-size", "16"}});
}

std::string SvgDocument::str() const {
  return "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"" +
         format_number(width_, 0) + "\" height=\"" + format_number(height_, 0) + "\" viewBox=\"0 0 " +
         format_number(width_, 0) + " " + format_number(height_, 0) +
         "\" font-family=\"sans-serif\" font-size=\"12\">\n<rect x=\"0\" y=\"0\" width=\"100%\" "
         "height=\"100%\" "
         "fill=\"white\"/>\n" +
         body_ + "</svg>\n";
}

void SvgDocument::save(const std::string& path) const {
  std::ofstream out(path);
  out << str();
  if (!out) fail(Errc::system, "cannot write the SVG file '" + path + "'");
}

}  // namespace ferry::tools::plot
