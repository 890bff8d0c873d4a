// Reading the process environment with validation: a malformed value is an error that names the variable.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace ferry::env {

// The value of `name`, or nullopt when unset. An empty value counts as set.
std::optional<std::string> get(const char* name);

// The integer value of `name`, or nullopt when unset; throws Errc::invalid_argument when the value is not a
// whole decimal number in [min, max].
std::optional<std::int64_t> get_int(const char* name, std::int64_t min = INT64_MIN, std::int64_t max = INT64_MAX);

}  // namespace ferry::env
