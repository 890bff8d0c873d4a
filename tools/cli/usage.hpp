// What every `ferry` command shares on its command line: examples in --help, value checks that turn a bad
// value into a usage error, and the one place that decides how errors look and which status they exit with.
//
// The exit status contract (kExitContract, shown by `ferry --help` and in the README):
//   0  the command did what was asked;
//   2  what was asked cannot be done as asked: an unknown flag, a bad value, a combination of flags, an
//      input file (trace, data, checkpoint) or the environment (the job's variables). Checked before any
//      work wherever it can be (the checkpoints of a job's ranks are compared once the ranks have met);
//   1  a failure while working (a peer died, a wait timed out, the system refused, a --check failed).
// A usage error prints
//   ferry bench transport: --sizes: size 'x' does not start with a number
//   Usage: ferry bench transport [OPTIONS]
//   Run 'ferry bench transport --help' for every option and examples.
// on stderr; --help prints on stdout and exits 0. Under `ferry launch` a rank's status becomes the
// launcher's, so a usage error is 2 there too.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <initializer_list>
#include <new>
#include <stdexcept>
#include <string>
#include <string_view>

namespace ferry::tools::cli {

inline constexpr int kExitUsage = 2;
inline constexpr int kExitFailure = 1;

// The contract above in the words of `ferry --help`.
inline constexpr std::string_view kExitContract =
    "Exit status: 0 done; 2 what was asked cannot be done as asked (a flag, a value, a combination of flags, "
    "an input file, the environment), found before any work where it can be; 1 a failure while working. "
    "Under "
    "`ferry launch` the first failing rank's status.";

// An exception's message without ferry's "ferry: <kind>: " head.
std::string plain_message(const std::exception& e);

// A usage error found after CLI11's parsing (a combination of flags, an input file, the environment): exits
// kExitUsage with the usage line, like a bad flag.
class UsageError : public CLI::ParseError {
 public:
  explicit UsageError(std::string message) : CLI::ParseError("UsageError", std::move(message), kExitUsage) {}
};

// Runs the checks of what was asked (flags and their combinations, input files, the environment, output
// paths, the memory it needs) before any work; whatever they throw becomes a UsageError.
template <typename Checks>
auto before_work(Checks&& checks) -> decltype(checks()) {
  try {
    return checks();
  } catch (const CLI::ParseError&) {
    throw;
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    throw UsageError(plain_message(e));
  }
}

// Appends "Examples:" and one indented line per example to the command's --help.
void set_examples(CLI::App& command, std::initializer_list<std::string_view> lines);

// "ferry bench transport": the command's words from the root.
std::string command_path(const CLI::App& command);

// The command the user was running when parsing stopped: the deepest subcommand parsed so far.
const CLI::App& failing_command(const CLI::App& root);

// Reports `error` as described above for the command that was being parsed and returns the exit status.
int report_parse_error(const CLI::App& root, const CLI::ParseError& error);
// Reports what a command threw while it ran and returns the exit status: a ferry::Error of
// Errc::invalid_argument is a request that cannot be done (reported as a usage error, kExitUsage), anything
// else a failure (kExitFailure); std::bad_alloc is named as running out of memory.
int report_run_error(const CLI::App& root, const std::exception& error);

// A CLI11 check built from a parser that throws on bad input (ferry::Error or std::exception): the value is
// accepted when `parse` returns, and refused with the exception's message (without ferry's "ferry: <kind>: "
// head) otherwise. `description` shows in --help as the value's form, e.g. "SIZES".
CLI::Validator parses_with(std::string description, std::function<void(const std::string&)> parse);

// Common forms: a comma list of positive whole numbers ("8,16,24"), a comma list of positive numbers
// ("10,10,1").
CLI::Validator positive_int_list();
CLI::Validator positive_number_list();

}  // namespace ferry::tools::cli
