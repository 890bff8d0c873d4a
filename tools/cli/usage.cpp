#include "cli/usage.hpp"

#include <cstdio>
#include <exception>

#include "cli/lists.hpp"
#include "commands.hpp"
#include "ferry/core/error.hpp"

namespace ferry::tools::cli {
namespace {

// The message, the usage line and the hint, on stderr.
int report_usage_error(const CLI::App& command, const std::string& message) {
  const std::string path = command_path(command);
  std::fprintf(stderr, "%s: %s\n", path.c_str(), message.c_str());
  if (auto formatter = std::dynamic_pointer_cast<CLI::Formatter>(command.get_formatter())) {
    std::fputs(formatter->make_usage(&command, path).c_str(), stderr);
  }
  std::fprintf(stderr, "Run '%s --help' for every option and examples.\n", path.c_str());
  return kExitUsage;
}

}  // namespace

std::string plain_message(const std::exception& e) {
  std::string text = e.what();
  if (const auto* error = dynamic_cast<const Error*>(&e)) {
    const std::string head = "ferry: " + std::string(to_string(error->code())) + ": ";
    if (text.rfind(head, 0) == 0) text.erase(0, head.size());
  }
  return text;
}

void set_examples(CLI::App& command, std::initializer_list<std::string_view> lines) {
  std::string text = "\nExamples:\n";
  for (auto line : lines) text += "  " + std::string(line) + "\n";
  command.footer(text);
}

std::string command_path(const CLI::App& command) {
  std::string path;
  for (const CLI::App* at = &command; at != nullptr; at = at->get_parent()) {
    const std::string name = at->get_parent() == nullptr ? "ferry" : at->get_name();
    path = path.empty() ? name : name + " " + path;
  }
  return path;
}

const CLI::App& failing_command(const CLI::App& root) {
  const CLI::App* at = &root;
  while (!at->get_subcommands().empty()) at = at->get_subcommands().back();
  return *at;
}

int report_parse_error(const CLI::App& root, const CLI::ParseError& error) {
  const CLI::App& command = failing_command(root);
  const std::string path = command_path(command);
  if (dynamic_cast<const CLI::CallForHelp*>(&error) != nullptr ||
      dynamic_cast<const CLI::CallForAllHelp*>(&error) != nullptr) {
    const bool all = dynamic_cast<const CLI::CallForAllHelp*>(&error) != nullptr;
    const auto mode = all ? CLI::AppFormatMode::All : CLI::AppFormatMode::Normal;
    std::fputs(command.get_formatter()->make_help(&command, path, mode).c_str(), stdout);
    return 0;
  }
  if (error.get_exit_code() == static_cast<int>(CLI::ExitCodes::Success)) return 0;  // --version and alike
  // CLI11 checks required options and subcommands before it complains about words it did not expect, but
  // an unknown flag (a typo) is the more useful thing to hear about.
  std::string message = error.what();
  if (dynamic_cast<const CLI::RequiredError*>(&error) != nullptr) {
    std::string unexpected;
    for (const auto& word : command.remaining()) unexpected += " " + word;
    if (!unexpected.empty()) message = "The following argument was not expected:" + unexpected;
  }
  // CLI11 puts the option's name before a check's message; a parser that names the option itself would
  // repeat it ("--sms: --sms: ...").
  if (const auto colon = message.find(": "); colon != std::string::npos) {
    const std::string head = message.substr(0, colon + 2);
    if (message.compare(colon + 2, head.size(), head) == 0) message.erase(0, head.size());
  }
  return report_usage_error(command, message);
}

int report_run_error(const CLI::App& root, const std::exception& error) {
  const CLI::App& command = failing_command(root);
  if (const auto* e = dynamic_cast<const Error*>(&error); e != nullptr && e->code() == Errc::invalid_argument)
    return report_usage_error(command, plain_message(error));
  if (dynamic_cast<const std::bad_alloc*>(&error) != nullptr) {
    std::fprintf(stderr, "%s: out of memory (%s)\n", command_path(command).c_str(), error.what());
  } else {
    std::fprintf(stderr, "%s\n", error.what());
  }
  return kExitFailure;
}

CLI::Validator parses_with(std::string description, std::function<void(const std::string&)> parse) {
  return CLI::Validator(
      [parse = std::move(parse)](std::string& value) -> std::string {
        try {
          parse(value);
          return {};
        } catch (const std::exception& e) {
          return plain_message(e);
        }
      },
      std::move(description));
}

CLI::Validator positive_int_list() {
  return parses_with("N,N,...", [](const std::string& text) { parse_int_list(text, "list"); });
}

CLI::Validator positive_number_list() {
  return parses_with("X,X,...", [](const std::string& text) { parse_number_list(text, "list"); });
}

}  // namespace ferry::tools::cli

// Examples for `ferry --help`, `ferry train --help` and `ferry trace --help`: every other command sets its
// own next to its options; train's and trace's are kept here so that their files stay the trainer's.
namespace ferry::tools {
namespace {

void examples_if_missing(CLI::App& command, std::initializer_list<std::string_view> lines) {
  if (command.get_footer().empty()) cli::set_examples(command, lines);
}

}  // namespace

void add_missing_examples(CLI::App& app) {
  examples_if_missing(app, {
                               "ferry launch --nodes 2 --ranks-per-node 2 -- ferry topo",
                               "ferry launch --nodes 3 --netns --link-gbps 10,10,1 -- ferry probe fabric",
                               "ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench dispatch --sweep",
                               "ferry <command> --help",
                           });
  // The exit status contract, wrapped as the rest of --help is.
  std::string contract = "\n", line;
  std::string words(cli::kExitContract);
  for (std::size_t at = 0; at < words.size();) {
    std::size_t end = words.find(' ', at);
    if (end == std::string::npos) end = words.size();
    const std::string word = words.substr(at, end - at);
    if (!line.empty() && line.size() + 1 + word.size() > 100) {
      contract += line + "\n";
      line.clear();
    }
    line += (line.empty() ? "" : " ") + word;
    at = end + 1;
  }
  app.footer(app.get_footer() + contract + line + "\n");
  const auto all = [](CLI::App*) { return true; };
  for (CLI::App* command : app.get_subcommands(all)) {
    if (command->get_name() == "train") {
      examples_if_missing(*command, {
                                        "ferry train --steps 20                      # one process",
                                        "ferry launch --nodes 2 --ranks-per-node 2 -- ferry train --steps 20 "
                                        "--json run.json",
                                        "ferry launch --nodes 2 --ranks-per-node 2 -- ferry train --no-mtp "
                                        "--schedule dualpipe --pp 2 --micro-batches 8 --trace t.json",
                                    });
    } else if (command->get_name() == "trace") {
      examples_if_missing(*command, {
                                        "ferry trace t.json                           # overlap per rank",
                                        "ferry trace t.json --svg timeline.svg --step 2",
                                        "ferry trace t.json --json",
                                    });
    }
  }
}

}  // namespace ferry::tools
