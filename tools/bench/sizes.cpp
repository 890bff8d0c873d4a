#include "bench/sizes.hpp"

#include <cctype>

#include "ferry/core/error.hpp"

namespace ferry::tools {

std::size_t parse_size(const std::string& text) {
  std::size_t at = 0;
  std::size_t value = 0;
  while (at < text.size() && std::isdigit(static_cast<unsigned char>(text[at]))) {
    std::size_t next = value * 10 + static_cast<std::size_t>(text[at] - '0');
    if (next / 10 != value) fail(Errc::invalid_argument, "size '" + text + "' is too large");
    value = next;
    ++at;
  }
  if (at == 0) fail(Errc::invalid_argument, "size '" + text + "' does not start with a number");
  std::string suffix = text.substr(at);
  for (auto& c : suffix) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
  int shift = 0;
  if (suffix == "" || suffix == "B") {
    shift = 0;
  } else if (suffix == "K" || suffix == "KB" || suffix == "KIB") {
    shift = 10;
  } else if (suffix == "M" || suffix == "MB" || suffix == "MIB") {
    shift = 20;
  } else if (suffix == "G" || suffix == "GB" || suffix == "GIB") {
    shift = 30;
  } else {
    fail(Errc::invalid_argument, "size '" + text + "' has an unknown unit (use K, M or G)");
  }
  if (value > (~std::size_t{0} >> shift)) fail(Errc::invalid_argument, "size '" + text + "' is too large");
  if (value == 0) fail(Errc::invalid_argument, "size '" + text + "' is zero");
  return value << shift;
}

std::vector<std::size_t> parse_size_list(const std::string& text) {
  std::vector<std::size_t> sizes;
  if (auto dots = text.find(".."); dots != std::string::npos) {
    std::size_t first = parse_size(text.substr(0, dots));
    std::size_t last = parse_size(text.substr(dots + 2));
    if (first > last) fail(Errc::invalid_argument, "size range '" + text + "' runs backwards");
    for (std::size_t size = first; size <= last; size *= 2) {
      sizes.push_back(size);
      if (size > last / 2) break;
    }
    return sizes;
  }
  std::size_t start = 0;
  while (start <= text.size()) {
    std::size_t comma = text.find(',', start);
    if (comma == std::string::npos) comma = text.size();
    sizes.push_back(parse_size(text.substr(start, comma - start)));
    start = comma + 1;
  }
  return sizes;
}

std::string format_size(std::size_t bytes) {
  static const char* units[] = {"B", "KiB", "MiB", "GiB"};
  int unit = 0;
  while (unit < 3 && bytes >= 1024 && bytes % 1024 == 0) {
    bytes /= 1024;
    ++unit;
  }
  return std::to_string(bytes) + " " + units[unit];
}

}  // namespace ferry::tools
