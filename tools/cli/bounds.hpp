// Bounded numbers on the command line. Every count, size, rate and time a command takes has a range, checked
// while parsing (a usage error, exit 2, before any work) and shown in --help; the message prints the bounds
// as people write them:
//   ferry bench dispatch: --hidden: 4611686018427387904 is not a whole number in [1, 65536]
//   ferry train: --timeout: nan is not a number of seconds in (0, 604800] (a week)
// Not-a-number and infinity are refused everywhere (CLI11's own ranges let NaN through, and print their
// open ends as 309-digit numbers).
#pragma once

#include <CLI/CLI.hpp>
#include <cstdint>
#include <string>

namespace ferry::tools::cli {

// The longest any wait may be given (--timeout): a week. Longer deadlines overflow the clocks' arithmetic
// (about 9.2e9 s in nanoseconds) long before they are useful.
inline constexpr double kMaxWaitSeconds = 7 * 24 * 3600.0;

// Whole numbers in [min, max] (decimal; CLI11 also reads 0x.. and 0.. prefixes, and so does this check).
CLI::Validator whole_in(std::int64_t min, std::int64_t max);
// Finite numbers in [min, max], or (min, max] when min_open.
CLI::Validator number_in(double min, double max, bool min_open = false);
// A deadline in seconds: finite, above 0, at most `max`.
CLI::Validator seconds_up_to(double max = kMaxWaitSeconds);

// Adds a whole-number flag bound to `value` with the range [min, max], which --help shows with the default:
// the one way a command takes a count or a size. T is any integer type that holds max.
template <typename T>
CLI::Option* add_count(CLI::App& command, const std::string& name, T& value, std::int64_t min,
                       std::int64_t max, const std::string& help) {
  return command.add_option(name, value, help)->check(whole_in(min, max))->capture_default_str();
}

// "65536", "1048576", "-3": a bound as a message prints it. "(0, 604800]": a range of seconds.
std::string format_bound(std::int64_t value);
std::string format_number(double value);

}  // namespace ferry::tools::cli
