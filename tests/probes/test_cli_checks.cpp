// The checks every command runs on what it was asked before any work (tools/cli): bounded numbers with
// readable ranges, memory budgets whose products cannot wrap, output paths.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>

#include "cli/bounds.hpp"
#include "cli/memory_plan.hpp"
#include "cli/output_paths.hpp"
#include "ferry/core/error.hpp"

using namespace ferry::tools;
namespace fs = std::filesystem;

namespace {

// What a CLI11 check says of `text` ("" when it accepts it).
std::string verdict(const CLI::Validator& check, std::string text) {
  return check(text);
}

// The message of what `body` throws, which must be a ferry::Error of Errc::invalid_argument.
template <typename Body>
std::string refusal(Body body) {
  try {
    body();
  } catch (const ferry::Error& e) {
    CHECK(e.code() == ferry::Errc::invalid_argument);
    return e.what();
  }
  return "accepted";
}

// A fresh directory under the build tree, removed at the end.
struct TempDir {
  fs::path path;
  TempDir() {
    std::string pattern = std::string(FERRY_BINARY_DIR) + "/cli-checks-XXXXXX";
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    path = pattern;
  }
  ~TempDir() { fs::remove_all(path); }
};

}  // namespace

TEST_CASE("bounded flags refuse what is out of range, NaN and infinity, and print their bounds readably",
          "[cli]") {
  const auto tokens = cli::whole_in(1, 65536);
  for (const char* good : {"1", "65536", "4096", "0x10"}) CHECK(verdict(tokens, good).empty());
  for (const char* bad :
       {"0", "-1", "65537", "4611686018427387904", "99999999999999999999", "1.5", "x", ""}) {
    INFO(bad);
    const std::string message = verdict(tokens, bad);
    CHECK(message == std::string(bad) + " is not a whole number in [1, 65536]");
  }
  const auto fraction = cli::number_in(0.01, 1.0);
  CHECK(verdict(fraction, "0.5").empty());
  for (const char* bad : {"nan", "NaN", "inf", "-inf", "2", "0", "1e999"})
    CHECK(verdict(fraction, bad) == std::string(bad) + " is not a number in [0.01, 1]");
  const auto timeout = cli::seconds_up_to();
  for (const char* good : {"0.001", "100", "604800"}) CHECK(verdict(timeout, good).empty());
  for (const char* bad : {"nan", "inf", "0", "-5", "604801", "9.3e9", "1e300"}) {
    INFO(bad);
    const std::string message = verdict(timeout, bad);
    CHECK(message == std::string(bad) + " is not a number of seconds in (0, 604800] (a week)");
  }
  // CLI11's own open-ended ranges print DBL_MAX in 309 digits; these never print more than they must.
  CHECK(cli::format_number(std::numeric_limits<double>::max()).size() < 16);
}

TEST_CASE("a memory plan names the flags of its largest term and cannot wrap", "[cli]") {
  cli::MemoryPlan plan;
  plan.add("input rows", {{"--tokens", 4}, {"--hidden", std::uint64_t{1} << 62}, {"B", 2}});
  plan.add("routing", {{"--tokens", 4}, {"--topk", 8}, {"B", 12}});
  CHECK(plan.total() == std::numeric_limits<std::uint64_t>::max());  // 4 x 2^62 x 2 saturates
  const std::string message = refusal([&] { plan.check(std::uint64_t{64} << 30, 1); });
  CHECK_THAT(message,
             Catch::StartsWith("ferry: invalid argument: --tokens, --hidden: needs about more than 16 EiB") &&
                 Catch::Contains("input rows (--tokens 4 x --hidden 4611686018427387904 x 2 B)") &&
                 Catch::Contains("more than the 64 GiB of memory here"));

  cli::MemoryPlan fits;
  fits.add("rows", {{"--tokens", 1024}, {"--hidden", 1024}, {"B", 1024}});  // 1 GiB
  fits.add_bytes("buffer", std::uint64_t{1} << 30, "--num-sms");
  CHECK(fits.total() == std::uint64_t{2} << 30);
  CHECK_NOTHROW(fits.check(std::uint64_t{8} << 30, 4));
  CHECK_THAT(refusal([&] { fits.check(std::uint64_t{8} << 30, 5); }),
             Catch::Contains("needs about 2 GiB per process") &&
                 Catch::Contains("x 5 processes on this host") && Catch::Contains("more than the 8 GiB"));
  CHECK(cli::usable_memory_bytes() > 0);
}

TEST_CASE("output paths are checked without creating files, and a checkpoint directory is made", "[cli]") {
  TempDir dir;
  const std::string file = (dir.path / "report.json").string();
  CHECK_NOTHROW(cli::check_output_file("--json", ""));
  CHECK_NOTHROW(cli::check_output_file("--json", file));
  CHECK_FALSE(fs::exists(file));
  std::ofstream(file) << "old";
  CHECK_NOTHROW(cli::check_output_file("--json", file));
  CHECK_THAT(refusal([&] { cli::check_output_file("--json", dir.path.string()); }),
             Catch::Contains("--json: cannot write '" + dir.path.string() + "': it is a directory"));
  CHECK_THAT(refusal([&] { cli::check_output_file("--svg", (dir.path / "no/such/t.svg").string()); }),
             Catch::Contains("--svg: cannot write") && Catch::Contains("no/such does not exist"));
  CHECK_THAT(refusal([&] { cli::check_output_file("--plot", file + "/x.svg"); }),
             Catch::Contains("--plot: cannot write") && Catch::Contains("is not a directory"));

  const fs::path nested = dir.path / "ckpt" / "run1";
  CHECK_NOTHROW(cli::check_output_dir("--checkpoint", nested.string()));
  CHECK(fs::is_directory(nested));
  CHECK_THAT(refusal([&] { cli::check_output_dir("--checkpoint", file); }),
             Catch::Contains("--checkpoint: cannot write") && Catch::Contains("not a directory"));
  CHECK_THAT(refusal([&] { cli::check_output_dir("--checkpoint", file + "/sub"); }),
             Catch::Contains("--checkpoint: cannot write"));
}
