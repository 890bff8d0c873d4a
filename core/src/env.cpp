#include "ferry/core/env.hpp"

#include <charconv>
#include <cstdlib>

#include "ferry/core/error.hpp"

namespace ferry::env {

std::optional<std::string> get(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr) return std::nullopt;
  return std::string(value);
}

std::optional<std::int64_t> get_int(const char* name, std::int64_t min, std::int64_t max) {
  auto text = get(name);
  if (!text) return std::nullopt;
  std::int64_t value = 0;
  const char* first = text->data();
  const char* last = first + text->size();
  auto [ptr, ec] = std::from_chars(first, last, value);
  if (text->empty() || ec != std::errc() || ptr != last) {
    fail(Errc::invalid_argument,
         std::string("environment variable ") + name + "='" + *text + "' is not a whole number");
  }
  if (value < min || value > max) {
    fail(Errc::invalid_argument, std::string("environment variable ") + name + "=" + *text +
                                     " is out of range [" + std::to_string(min) + ", " + std::to_string(max) +
                                     "]");
  }
  return value;
}

}  // namespace ferry::env
