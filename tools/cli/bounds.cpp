#include "cli/bounds.hpp"

#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>

namespace ferry::tools::cli {
namespace {

// The text as CLI11 will convert it, or false when it is no whole number that fits 64 bits.
bool parse_whole(const std::string& text, std::int64_t& out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const long long value = std::strtoll(text.c_str(), &end, 0);
  if (errno != 0 || end != text.c_str() + text.size()) return false;
  out = value;
  return true;
}

bool parse_number(const std::string& text, double& out) {
  if (text.empty()) return false;
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(text.c_str(), &end);
  if (end != text.c_str() + text.size()) return false;
  out = value;
  return true;  // ERANGE (1e999, 1e-999) is judged by the range, as CLI11 converts it
}

std::string range_text(double min, double max, bool min_open) {
  return std::string(min_open ? "(" : "[") + format_number(min) + ", " + format_number(max) + "]";
}

}  // namespace

std::string format_bound(std::int64_t value) {
  return std::to_string(value);
}

std::string format_number(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.6g", value);
  return text;
}

CLI::Validator whole_in(std::int64_t min, std::int64_t max) {
  const std::string range = "[" + format_bound(min) + ", " + format_bound(max) + "]";
  return CLI::Validator(
      [min, max, range](std::string& text) -> std::string {
        std::int64_t value = 0;
        if (parse_whole(text, value) && value >= min && value <= max) return {};
        return text + " is not a whole number in " + range;
      },
      "INT in " + range);
}

CLI::Validator number_in(double min, double max, bool min_open) {
  const std::string range = range_text(min, max, min_open);
  return CLI::Validator(
      [min, max, min_open, range](std::string& text) -> std::string {
        double value = 0;
        if (parse_number(text, value) && std::isfinite(value) && (min_open ? value > min : value >= min) &&
            value <= max)
          return {};
        return text + " is not a number in " + range;
      },
      "NUMBER in " + range);
}

CLI::Validator seconds_up_to(double max) {
  std::string range = range_text(0, max, true);
  if (max == kMaxWaitSeconds) range += " (a week)";
  return CLI::Validator(
      [max, range](std::string& text) -> std::string {
        double value = 0;
        if (parse_number(text, value) && std::isfinite(value) && value > 0 && value <= max) return {};
        return text + " is not a number of seconds in " + range;
      },
      "SECONDS in " + range);
}

}  // namespace ferry::tools::cli
