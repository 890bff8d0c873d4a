// Every `ferry` command has --help with examples, and a bad flag or value is a usage error: a message naming
// the command and the problem, the usage line, and exit status 2 (also through `ferry launch`).
#include <catch2/catch.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "../peer/launch_run.hpp"

namespace {

const std::string kFerry = FERRY_BIN;

// The subcommand names listed in `help` (CLI11's "Subcommands:" block).
std::vector<std::string> subcommands_in(const std::string& help) {
  std::vector<std::string> names;
  std::istringstream in(help);
  bool listing = false;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("Subcommands:", 0) == 0) {
      listing = true;
      continue;
    }
    if (!listing) continue;
    if (line.size() < 3 || line[0] != ' ') break;
    std::istringstream words(line);
    std::string name;
    words >> name;
    names.push_back(name);
  }
  return names;
}

// "" and every command path below it ("launch", "bench", "bench transport", ...), each with its --help.
std::vector<std::pair<std::string, std::string>> all_commands(const std::string& path = "") {
  const auto help = ferry::test::run(kFerry + (path.empty() ? "" : " " + path) + " --help");
  REQUIRE(help.exit_code == 0);
  std::vector<std::pair<std::string, std::string>> out{{path, help.output}};
  for (const auto& name : subcommands_in(help.output)) {
    for (auto& below : all_commands(path.empty() ? name : path + " " + name)) out.push_back(std::move(below));
  }
  return out;
}

void check_usage_error(const std::string& args, const std::string& command, const std::string& problem) {
  const auto outcome = ferry::test::run(kFerry + " " + args);
  INFO(outcome.output);
  CHECK(outcome.exit_code == 2);
  CHECK_THAT(outcome.output, Catch::Contains(command + ": ") && Catch::Contains(problem) &&
                                 Catch::Contains("Usage: " + command));
}

}  // namespace

TEST_CASE("every command has --help with examples, and an unknown flag exits 2 naming the command", "[cli]") {
  const auto commands = all_commands();
  for (const char* expected : {"launch", "topo", "probe fabric", "probe overlap", "bench transport",
                               "bench dispatch", "bench combine", "train", "trace"}) {
    CHECK(std::find_if(commands.begin(), commands.end(),
                       [&](const auto& c) { return c.first == expected; }) != commands.end());
  }
  for (const auto& [command, help] : commands) {
    INFO("ferry " << command);
    CHECK_THAT(help, Catch::Contains("Examples:\n  ferry") || Catch::Contains("Examples:\n  mpirun"));
    const std::string path = command.empty() ? "ferry" : "ferry " + command;
    check_usage_error(command + " --no-such-flag", path, "--no-such-flag");
  }
}

TEST_CASE("bad values are usage errors that name the option and the value", "[cli]") {
  check_usage_error("bench transport --sizes 4K..x", "ferry bench transport", "--sizes: size 'x'");
  check_usage_error("bench dispatch --num-sms 1", "ferry bench dispatch", "--num-sms");
  check_usage_error("probe fabric --fraction 2", "ferry probe fabric", "--fraction");
  check_usage_error("probe fabric --size 1Q", "ferry probe fabric", "unknown unit");
  check_usage_error("launch --netns --link-gbps 10,x -- true", "ferry launch",
                    "'x' is not a positive number");
  check_usage_error("launch --link-gbps 10 -- true", "ferry launch", "--netns");
  // Checked by the launcher before anything is set up (no root or namespaces needed).
  const auto rates = ferry::test::run(kFerry + " launch --nodes 3 --netns --link-gbps 10,1 -- true");
  CHECK(rates.exit_code == 2);
  CHECK_THAT(rates.output, Catch::Contains("2 rates for 3 nodes"));
}

TEST_CASE("a rank's usage error is the launcher's exit status", "[cli]") {
  const auto outcome =
      ferry::test::run(kFerry + " launch --nodes 2 --timeout 60 -- " + kFerry + " bench transport --bogus");
  CHECK(outcome.exit_code == 2);
  CHECK_THAT(outcome.output,
             Catch::Contains("ferry bench transport: The following argument was not expected: --bogus"));
}
