#include "cli/lists.hpp"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "ferry/core/error.hpp"

namespace ferry::tools::cli {
namespace {

std::vector<std::string> split_commas(const std::string& text, const std::string& what) {
  std::vector<std::string> items;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = text.find(',', start);
    items.push_back(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (items.back().empty()) fail(Errc::invalid_argument, what + ": empty item in '" + text + "'");
    if (comma == std::string::npos) return items;
    start = comma + 1;
  }
}

}  // namespace

std::vector<int> parse_int_list(const std::string& text, const std::string& what) {
  std::vector<int> values;
  for (const auto& item : split_commas(text, what)) {
    char* end = nullptr;
    errno = 0;
    const long value = std::strtol(item.c_str(), &end, 10);
    if (*end != '\0' || errno != 0 || value <= 0 || value > 1'000'000 || item[0] == '+' || item[0] == ' ') {
      fail(Errc::invalid_argument, what + ": '" + item + "' is not a positive whole number");
    }
    values.push_back(static_cast<int>(value));
  }
  return values;
}

std::vector<double> parse_number_list(const std::string& text, const std::string& what) {
  std::vector<double> values;
  for (const auto& item : split_commas(text, what)) {
    char* end = nullptr;
    errno = 0;
    const double value = std::strtod(item.c_str(), &end);
    if (*end != '\0' || errno != 0 || !std::isfinite(value) || value <= 0 || item[0] == ' ') {
      fail(Errc::invalid_argument, what + ": '" + item + "' is not a positive number");
    }
    values.push_back(value);
  }
  return values;
}

}  // namespace ferry::tools::cli
