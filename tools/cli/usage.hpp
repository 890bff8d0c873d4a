// What every `ferry` command shares on its command line: examples in --help, value checks that turn a bad
// value into a usage error, and the one place that decides how a usage error looks and exits.
//
// A usage error (an unknown flag, a missing or malformed value, a value out of range) prints
//   ferry bench transport: --sizes: size 'x' does not start with a number
//   Usage: ferry bench transport [OPTIONS]
//   Run 'ferry bench transport --help' for every option and examples.
// on stderr and exits kExitUsage (2), as most Unix tools do; --help prints on stdout and exits 0. Under
// `ferry launch` a rank's usage error becomes the launcher's exit status, so it is 2 there too.
#pragma once

#include <CLI/CLI.hpp>
#include <functional>
#include <initializer_list>
#include <string>
#include <string_view>

namespace ferry::tools::cli {

inline constexpr int kExitUsage = 2;

// Appends "Examples:" and one indented line per example to the command's --help.
void set_examples(CLI::App& command, std::initializer_list<std::string_view> lines);

// "ferry bench transport": the command's words from the root.
std::string command_path(const CLI::App& command);

// The command the user was running when parsing stopped: the deepest subcommand parsed so far.
const CLI::App& failing_command(const CLI::App& root);

// Reports `error` as described above for the command that was being parsed and returns the exit status.
int report_parse_error(const CLI::App& root, const CLI::ParseError& error);

// A CLI11 check built from a parser that throws on bad input (ferry::Error or std::exception): the value is
// accepted when `parse` returns, and refused with the exception's message (without ferry's "ferry: <kind>: "
// head) otherwise. `description` shows in --help as the value's form, e.g. "SIZES".
CLI::Validator parses_with(std::string description, std::function<void(const std::string&)> parse);

// Common forms: a size list (bench/sizes.hpp: "4K..64M", "4K,1M"), a comma list of positive whole numbers
// ("8,16,24"), a comma list of positive numbers ("10,10,1").
CLI::Validator size_list();
CLI::Validator positive_int_list();
CLI::Validator positive_number_list();

}  // namespace ferry::tools::cli
