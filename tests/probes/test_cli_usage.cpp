// Every `ferry` command has --help with examples, and a bad flag or value is a usage error: a message naming
// the command and the problem, the usage line, and exit status 2 (also through `ferry launch`).
#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
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

// A request ferry cannot do as asked: exit 2, the message naming `problem`, the usage line and the hint,
// and nothing else (refused before any work: no banner, no step, no report).
void check_refused_before_work(const std::string& args, const std::string& command,
                               const std::string& problem) {
  const auto outcome = ferry::test::run(kFerry + " " + args);
  INFO(outcome.output);
  CHECK(outcome.exit_code == 2);
  CHECK_THAT(outcome.output, Catch::StartsWith(command + ": ") && Catch::Contains(problem) &&
                                 Catch::Contains("Usage: " + command));
  CHECK(std::count(outcome.output.begin(), outcome.output.end(), '\n') == 3);
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

// Issue 24's command-line attacks: each one crashed, overflowed, ran for nothing, or failed only after the
// work with exit 1. Now each is refused with exit 2 naming the flag (or file, or variable), before any work.
TEST_CASE("what cannot be done as asked exits 2 naming the flag, before any work", "[cli]") {
  const std::string deep = ferry::test::temp_path("deep-trace"), dir = ferry::test::temp_path("a-directory");
  std::ofstream(deep) << std::string(100000, '[') << std::string(100000, ']');
  std::filesystem::create_directories(dir);
  const struct {
    std::string args, command, problem;
  } cases[] = {
      // T x H overflowed and make_inputs wrote through null (SIGSEGV).
      {"bench dispatch --tokens 4 --hidden 4611686018427387904", "ferry bench dispatch",
       "--hidden: 4611686018427387904 is not a whole number in [1, 65536]"},
      // In range one by one, too large together: no std::bad_alloc mid-run.
      {"bench combine --tokens 1048576 --hidden 65536", "ferry bench combine",
       "--tokens, --hidden: needs about"},
      {"bench dispatch --topk 100 --experts 8", "ferry bench dispatch", "--topk 100 exceeds the 8 experts"},
      {"bench dispatch --sweep --sweep-sms 2048", "ferry bench dispatch", "--sweep-sms"},
      // NaN and 1e10 s overflowed the deadline into a misleading HELLO error; bounds print readably.
      {"bench dispatch --timeout nan", "ferry bench dispatch",
       "--timeout: nan is not a number of seconds in (0, 604800]"},
      {"train --timeout 1e10", "ferry train", "--timeout: 1e10 is not a number of seconds in (0, 604800]"},
      {"launch --timeout -1 -- true", "ferry launch", "--timeout: -1 is not a whole number in [0, 31536000]"},
      {"launch --grace nan -- true", "ferry launch", "--grace: nan is not a number in [0, 3600]"},
      {"probe fabric --fraction nan", "ferry probe fabric", "--fraction: nan is not a number in [0.01, 1]"},
      {"probe fabric --size 1 --bytes 64G", "ferry probe fabric", "--bytes / --size"},
      // Silently ignored or accepted before.
      {"train --resume", "ferry train", "--resume requires --checkpoint"},
      {"train --save-every -1", "ferry train", "--save-every: -1 is not a whole number in [0, 1000000000]"},
      {"train --stop-after -1", "ferry train", "--stop-after: -1 is not a whole number"},
      // Found after parsing, and exit 1 without the usage line, before.
      {"train --topk 100", "ferry train",
       "--topk: must be in [1, max_groups * experts / groups = 4], got 100"},
      {"train --heads 3", "ferry train", "--heads: must divide dim=64"},
      {"train --dim 65536 --seq 65536 --batch 64", "ferry train",
       "--batch, --seq, --heads: the attention scores"},
      {"bench transport", "ferry bench transport", "needs an even world size of at least 2, not 1"},
      // Output paths, checked only after the whole run before.
      {"bench dispatch --tokens 8 --hidden 8 --json /nonexistent-dir/d.json", "ferry bench dispatch",
       "--json: cannot write '/nonexistent-dir/d.json': directory /nonexistent-dir does not exist"},
      {"bench dispatch --sweep --save-config /nonexistent-dir/c.json", "ferry bench dispatch",
       "--save-config"},
      {"bench combine --sweep --plot " + dir, "ferry bench combine",
       "--plot: cannot write '" + dir + "': it is a directory"},
      {"train --steps 1 --json /nonexistent-dir/log.json", "ferry train", "--json: cannot write"},
      {"train --steps 1 --schedule none --trace /nonexistent-dir/t.json", "ferry train",
       "--trace: cannot write"},
      {"train --steps 1 --checkpoint " + deep, "ferry train", "--checkpoint: cannot write"},
      {"trace " + deep + " --svg /nonexistent-dir/t.svg", "ferry trace", "--svg: cannot write"},
      {"probe fabric --json /nonexistent-dir/f.json", "ferry probe fabric", "--json: cannot write"},
      // Input files: nesting that crashed the error message, a device read until memory ran out.
      {"trace " + deep, "ferry trace", "JSON nested deeper than 32 levels"},
      {"train --steps 1 --data /dev/zero", "ferry train", "data file /dev/zero holds more than the 256 MiB"},
  };
  for (const auto& c : cases) {
    if (c.problem.empty()) continue;
    INFO("ferry " << c.args);
    check_refused_before_work(c.args, c.command, c.problem);
  }
  const auto env =
      ferry::test::run("FERRY_RANK=0 FERRY_WORLD_SIZE=2 " + kFerry + " bench dispatch --tokens 8");
  CHECK(env.exit_code == 2);
  CHECK_THAT(env.output, Catch::StartsWith("ferry bench dispatch: ") && Catch::Contains("FERRY_"));
  std::filesystem::remove(deep);
  std::filesystem::remove_all(dir);
}

TEST_CASE("a checkpoint at or past the run's steps is refused naming the file and both numbers", "[cli]") {
  const std::string dir = ferry::test::temp_path("ckpt-steps");
  const auto train = [&](const std::string& more) {
    return ferry::test::run(kFerry +
                            " train --layers 1 --dense 1 --dim 16 --heads 2 --seq 8 --batch 2 "
                            "--checkpoint " +
                            dir + more);
  };
  REQUIRE(train(" --steps 2").exit_code == 0);
  const auto outcome = train(" --steps 2 --resume");
  CHECK(outcome.exit_code == 2);
  CHECK_THAT(outcome.output,
             Catch::Contains("checkpoint " + dir + "/rank0.ckpt is at step 2, not below the run's 2 steps"));
  CHECK_THAT(outcome.output, !Catch::Contains("step     "));  // trained nothing, printed no step
  CHECK(train(" --steps 3 --resume").exit_code == 0);         // a longer run goes on from it
  std::filesystem::remove_all(dir);
}
