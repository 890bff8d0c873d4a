// scripts/gpu-check proven on this machine before a GPU sees it: a stage of stub programs (FERRY_GPU_STAGE)
// that pass, hang, skip or fail, a stub nvidia-smi whose driver is too old for the staged CUDA runtime, a
// stub Python package step (a stub build-python-package in the stage, a stub interpreter as FERRY_PYTHON),
// and what the run leaves under $OUT (at most 6 files: the table, the log tarball, figures.json). And the
// names gpu-check, gpu-stage and the GPU tests share: every program gpu-check runs is staged, every Catch2
// filter it uses selects a test case of the built program, and the sanitizer steps select no [timing] case.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

#include "common/skip.hpp"
#include "peer/launch_run.hpp"

namespace fs = std::filesystem;
using Catch::Contains;
using ferry::test::Outcome;

namespace {

const std::string kGpuCheck = std::string(FERRY_SOURCE_DIR) + "/scripts/gpu-check";
const std::string kGpuStage = std::string(FERRY_SOURCE_DIR) + "/scripts/gpu-stage";

std::string read_file(const fs::path& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_program(const fs::path& path, const std::string& body) {
  std::ofstream(path) << "#!/bin/sh\n" << body << "\n";
  fs::permissions(path, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec);
}

std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  return lines;
}

// What a stub test program does: pass, fail, skip (exit 77) or hang.
std::string behaviour(const std::string& what) {
  if (what == "pass") return "echo 'All tests passed (1 assertion in 1 test case)'";
  if (what == "fail") return "echo 'test cases: 1 | 1 failed'; exit 1";
  if (what == "skip") return "echo 'SKIPPED: no GPU (stub)'; exit 77";
  if (what == "hang") return "exec sleep 600";
  FAIL("unknown behaviour " << what);
  return "";
}

// A stub test program that does `smoke` when gpu-check runs its smoke case (the filter "[smoke]" last), else
// `other`.
std::string smoke_or(const std::string& smoke, const std::string& other) {
  return "for last in \"$@\"; do :; done\nif [ \"$last\" = \"[smoke]\" ]; then " + behaviour(smoke) +
         "; else " + behaviour(other) + "; fi";
}

// `ferry` as gpu-check calls it: --help, launch (runs the command after --), bench (writes --json; hangs for
// the benchmark FERRY_STUB_HANG names), train (writes a training log whose overlap figures differ with
// --no-overlap), trace.
const char* kFerryStub = R"(json=""; previous=""
for argument in "$@"; do [ "$previous" = "--json" ] && json=$argument; previous=$argument; done
case "$1" in
  --help) exit 0 ;;
  launch) while [ $# -gt 0 ] && [ "$1" != "--" ]; do shift; done; shift; exec "$@" ;;
  trace) exit 0 ;;
  bench) [ "$2" = "${FERRY_STUB_HANG-}" ] && exec sleep 600
    echo "stub bench $2: 123 GB/s"; [ -n "$json" ] && echo "{\"bench\": \"$2\", \"gbps\": 123}" >"$json"; exit 0 ;;
  train)
    case "$*" in *--no-overlap*) wall=6.0; ratio=0.0; step=1.5 ;; *) wall=4.0; ratio=0.75; step=1.0 ;; esac
    echo "ferry train: stub"
    [ -n "$json" ] && echo "{\"steps\": [{\"step\": 0, \"seconds\": 9.0}, {\"step\": 1, \"seconds\": $step}],
      \"overlap_metrics\": {\"total\": {\"wall_s\": $wall, \"overlap_ratio\": $ratio, \"exposed_comm_s\": 0.5}}}" >"$json"
    exit 0 ;;
esac
echo "stub ferry: unexpected arguments: $*" >&2
exit 3)";

// compute-sanitizer --tool T --error-exitcode 1 PROGRAM ARGS...: runs the program, or refuses the device.
const char* kSanitizerStub = R"(shift 4
"$@"
status=$?
echo "========= ERROR SUMMARY: 0 errors"
exit $status)";
const char* kRefusingSanitizerStub = R"(echo "========= Error: Device not supported"
exit 1)";
// The Python step's interpreter (FERRY_PYTHON): answers gpu-check's probe as FERRY_STUB_TORCH says (ok,
// no-torch, no-cuda) and runs "pytest" as FERRY_STUB_PYTEST says (pass, fail), noting what it was given in
// pytest-ran beside tools/.
const char* kPythonStub = R"sh(here=$(dirname "$0")
if [ "$1" = "-c" ]; then
  case "${FERRY_STUB_TORCH:-ok}" in
    ok) echo "ok: torch 2.11.0 (CUDA 13.0), 1 GPU(s): Stub GPU"; echo "/stub/cudart" ;;
    no-torch) echo "skip: $0 has no torch (ModuleNotFoundError: No module named 'torch')" ;;
    no-cuda) echo "skip: torch 2.11.0 sees no CUDA GPU (torch.cuda.is_available() is False; CUDA None)" ;;
  esac
  exit 0
fi
if [ "$1 $2" = "-m pytest" ]; then
  echo "FERRY_TEST_DEVICE=$FERRY_TEST_DEVICE PYTHONPATH=$PYTHONPATH LD_LIBRARY_PATH=$LD_LIBRARY_PATH" \
    "FERRY_BIN=$FERRY_BIN args: $*" >"$here/../pytest-ran"
  case "${FERRY_STUB_PYTEST:-pass}" in
    pass) echo "5 passed, 3 skipped in 1.00s"; exit 0 ;;
    fail) echo "FAILED test_deepep.py::test_deepep_checks_with_torchrun_environment[1-4]"
      echo "1 failed, 4 passed in 1.00s"; exit 1 ;;
  esac
fi
echo "stub python: unexpected arguments: $*" >&2
exit 3)sh";

// scripts/build-python-package as staged: builds (an empty package in OUT_DIR, its last argument), cannot
// build here (exit 77: "not run: why") or fails, as FERRY_STUB_BUILD says.
const char* kBuildPythonStub = R"sh(for last in "$@"; do :; done
case "${FERRY_STUB_BUILD:-ok}" in
  ok) mkdir -p "$last/ferry"; echo "scripts/build-python-package: built $last/ferry (stub) in 1 s" ;;
  notrun) echo "scripts/build-python-package: not run: no Python.h for Python 3.12 (stub)"; exit 77 ;;
  fail) echo "python/src/module.cpp:1: error: stub"
    echo "scripts/build-python-package: FAILED: a source did not compile"; exit 1 ;;
esac)sh";

const char* kMpsControlStub = R"(case "$1" in -d) exit 0 ;; esac
read -r command
case "$command" in get_server_list) echo 4242 ;; esac
exit 0)";

// The test steps gpu-check runs: "NAME CAP PROGRAM ARGS..." a line.
std::vector<std::vector<std::string>> listed_steps() {
  const Outcome listed = ferry::test::run("bash " + kGpuCheck + " --list-steps");
  REQUIRE(listed.exit_code == 0);
  std::vector<std::vector<std::string>> steps;
  for (const std::string& line : lines_of(listed.output)) {
    std::istringstream in(line);
    std::vector<std::string> fields;
    for (std::string field; in >> field;) fields.push_back(field);
    if (fields.size() >= 3) steps.push_back(fields);
  }
  REQUIRE(steps.size() >= 8);
  return steps;
}

struct Run {
  Outcome outcome;
  double seconds = 0;
  std::string table;
  std::set<std::string> out_files;
  std::string tarball_listing;
  std::string figures;  // figures.json
};

// A scratch folder with a stage of stubs (bin/, or packed as gpu-check finds it packed), an $OUT and a
// TMPDIR.
class Scratch {
 public:
  Scratch() {
    std::string pattern = (fs::temp_directory_path() / "ferry-gpu-check-test.XXXXXX").string();
    REQUIRE(::mkdtemp(pattern.data()) != nullptr);
    root_ = pattern;
    fs::create_directories(tree() / "bin");
    fs::create_directories(tree() / "lib");
    fs::create_directories(root_ / "out");
    fs::create_directories(root_ / "tmp");
    fs::create_directories(root_ / "tools");
    std::ofstream(tree() / "lib" / "libstub.so.1") << "not a library\n";
    write_program(tree() / "bin" / "ferry", kFerryStub);
    write_program(root_ / "tools" / "sanitizer", kSanitizerStub);
    write_program(root_ / "tools" / "refusing-sanitizer", kRefusingSanitizerStub);
    write_program(root_ / "tools" / "mps-control", kMpsControlStub);
  }
  ~Scratch() {
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }
  Scratch(const Scratch&) = delete;
  Scratch& operator=(const Scratch&) = delete;

  fs::path tree() const { return root_ / "stage"; }
  fs::path tools() const { return root_ / "tools"; }

  // Every program of gpu-check's steps (the optional ones left out), each with `what`, then the overrides.
  void stub_programs(const std::string& what) {
    for (const auto& step : listed_steps()) {
      if (step[2] != "test_gpu_low_latency") write_program(tree() / "bin" / step[2], behaviour(what));
    }
  }
  void stub(const std::string& program, const std::string& body) {
    write_program(tree() / "bin" / program, body);
  }
  // The Python package's sources, tests and build script, as gpu-stage stages them (the script a stub), and a
  // stub interpreter; python_env() names it for gpu-check.
  void stage_python() {
    for (const char* folder : {"python/src", "python/ferry", "tests/python", "scripts"})
      fs::create_directories(tree() / folder);
    std::ofstream(tree() / "python" / "src" / "module.cpp") << "// stub\n";
    std::ofstream(tree() / "tests" / "python" / "test_stub.py") << "# stub\n";
    write_program(tree() / "scripts" / "build-python-package", kBuildPythonStub);
    write_program(tools() / "python", kPythonStub);
  }
  std::string python_env() const { return "FERRY_PYTHON=" + (tools() / "python").string(); }
  // What the stub interpreter's pytest was given ("" when pytest did not run).
  std::string pytest_ran() const { return read_file(root_ / "pytest-ran"); }
  // A program in tools/ (put first on PATH with path_first()).
  void tool(const std::string& program, const std::string& body) { write_program(tools() / program, body); }
  std::string path_first() const { return "PATH=" + tools().string() + ":$PATH"; }
  // The stage's REQUIREMENTS, as gpu-stage writes them.
  void require_driver(const std::string& runtime, const std::string& driver) {
    std::ofstream(tree() / "REQUIREMENTS")
        << "cuda_runtime=" << runtime << "\nminimum_driver=" << driver << "\n";
  }
  fs::path root() const { return root_; }

  // Packs the stage as scripts/gpu-stage does (gpu-check then unpacks it).
  void pack() {
    fs::create_directories(root_ / "packed");
    REQUIRE(ferry::test::run("tar -cJf " + (root_ / "packed" / "ferry-gpu-stage.tar.xz").string() + " -C " +
                             tree().string() + " .")
                .exit_code == 0);
    if (fs::exists(tree() / "REQUIREMENTS"))
      fs::copy_file(tree() / "REQUIREMENTS", root_ / "packed" / "ferry-gpu-stage.requirements");
    packed_ = true;
  }

  Run gpu_check(int budget, bool gpu_machine, const std::string& sanitizer,
                const std::string& environment = "") {
    const fs::path stage = packed_ ? root_ / "packed" : tree();
    const std::string command =
        "cd " + root_.string() + " && OUT=" + (root_ / "out").string() +
        " FERRY_GPU_STAGE=" + stage.string() + " FERRY_GPU_MACHINE=" + (gpu_machine ? "1" : "0") +
        " FERRY_COMPUTE_SANITIZER=" + sanitizer + " FERRY_MPS_CONTROL=" + (tools() / "mps-control").string() +
        " TMPDIR=" + (root_ / "tmp").string() + " FERRY_TEST_SEED=7 " + environment + " bash " + kGpuCheck +
        " --budget " + std::to_string(budget);
    Run result;
    const auto start = std::chrono::steady_clock::now();
    result.outcome = ferry::test::run(command);
    result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    result.table = read_file(root_ / "out" / "gpu-check.md");
    result.figures = read_file(root_ / "out" / "figures.json");
    for (const auto& entry : fs::directory_iterator(root_ / "out"))
      result.out_files.insert(entry.path().filename().string());
    result.tarball_listing =
        ferry::test::run("tar -tzf " + (root_ / "out" / "gpu-check-logs.tar.gz").string()).output;
    return result;
  }

 private:
  fs::path root_;
  bool packed_ = false;
};

// The table's row for a step ("| name | result | ..."), or "" when it has none.
std::string row_of(const std::string& table, const std::string& step) {
  for (const std::string& line : lines_of(table))
    if (line.rfind("| " + step + " |", 0) == 0) return line;
  return "";
}

void check_out_folder(const Run& run) {
  INFO(run.table);
  CHECK(run.out_files.size() <= 6);
  CHECK(run.out_files.count("gpu-check.md") == 1);
  CHECK(run.out_files.count("gpu-check-logs.tar.gz") == 1);
  CHECK_THAT(run.tarball_listing, Contains("logs/smoke.log") && Contains("logs/gpu-check.md"));
}

}  // namespace

TEST_CASE("gpu-check with stubs that pass: every step in the table, three files, the overlap figures",
          "[unit]") {
  Scratch scratch;
  scratch.stub_programs("pass");
  scratch.stub("test_gpu_extra", behaviour("pass"));  // a GPU test no step names: run all the same
  scratch.pack();
  const Run run = scratch.gpu_check(120, true, (scratch.tools() / "sanitizer").string());
  INFO(run.table);
  CHECK(run.outcome.exit_code == 0);
  check_out_folder(run);
  CHECK(run.out_files == std::set<std::string>{"gpu-check.md", "gpu-check-logs.tar.gz", "figures.json"});
  for (const auto& step : listed_steps()) {
    if (step[2] == "test_gpu_low_latency") {
      CHECK_THAT(row_of(run.table, step[0]), Contains("not staged"));
    } else {
      CHECK_THAT(row_of(run.table, step[0]), Contains("| passed |"));
    }
  }
  for (const char* step : {"extra", "sanitizer-probe", "gpu-copy", "gpu-dispatch", "gpu-gemm", "overlap"})
    CHECK_THAT(row_of(run.table, step), Contains("| passed |"));
  CHECK_THAT(row_of(run.table, "pytest-cuda"), Contains("not staged"));
  CHECK_THAT(run.table, Contains("ferry-gpu-stage.tar.xz, unpacked"));
  CHECK_THAT(run.table, Contains("buffer-launch (two processes on one GPU) ran MPS (server: 4242"));
  CHECK_THAT(run.table, Contains("overlap ratio with overlap on: 0.750"));
  CHECK_THAT(run.table, Contains("pipelined window off/on: 1.50x; whole step off/on: 1.50x"));
  CHECK_THAT(run.table, Contains("0 failed, 0 skipped"));
  // figures.json: every benchmark's JSON and the overlap summary in one object.
  CHECK_THAT(run.figures, Contains("\"gpu-copy\": {") && Contains("\"bench\": \"gpu-gemm\"") &&
                              Contains("\"overlap_ratio\": 0.75"));
}

TEST_CASE("gpu-check: a hanging step ends the run failed within its budget", "[unit]") {
  Scratch scratch;
  scratch.stub_programs("pass");
  scratch.stub("test_gpu_dispatch", smoke_or("pass", "hang"));
  const int budget = 6;
  const Run run = scratch.gpu_check(budget, true, "none");
  INFO(run.table);
  CHECK(run.outcome.exit_code == 1);
  CHECK(run.seconds < budget + 2);
  CHECK_THAT(row_of(run.table, "smoke"), Contains("| passed |"));
  CHECK_THAT(row_of(run.table, "dispatch"), Contains("TIMED OUT") && Contains("the budget"));
  CHECK_THAT(row_of(run.table, "gpu-dispatch"), Contains("not run: budget spent"));
  CHECK_THAT(row_of(run.table, "overlap"), Contains("not run: budget spent"));
  check_out_folder(run);
}

TEST_CASE("gpu-check: a figure the budget cuts short is said so, and is no failure", "[unit]") {
  Scratch scratch;
  scratch.stub_programs("pass");
  const Run run = scratch.gpu_check(6, true, "none", "FERRY_STUB_HANG=gpu-gemm");
  INFO(run.table);
  CHECK(run.outcome.exit_code == 0);
  CHECK(run.seconds < 6 + 2);
  CHECK_THAT(row_of(run.table, "gpu-dispatch"), Contains("| passed |"));
  CHECK_THAT(row_of(run.table, "gpu-gemm"), Contains("cut short by the budget after"));
  CHECK_THAT(row_of(run.table, "overlap"), Contains("not run: budget spent"));
  CHECK_THAT(run.table, Contains("0 failed, 0 skipped, 1 figures cut short by the budget"));
  check_out_folder(run);
}

TEST_CASE("gpu-check: a skipped test fails on a GPU machine and is a skip elsewhere", "[unit]") {
  Scratch scratch;
  scratch.stub_programs("skip");
  SECTION("on a GPU machine the skipped smoke case stops the run as a failure") {
    const Run run = scratch.gpu_check(60, true, (scratch.tools() / "refusing-sanitizer").string());
    INFO(run.table);
    CHECK(run.outcome.exit_code == 1);
    CHECK_THAT(row_of(run.table, "smoke"), Contains("FAILED: skipped (exit 77) on a GPU machine"));
    CHECK_THAT(row_of(run.table, "dispatch"), Contains("not run: the smoke case failed"));
    CHECK_THAT(row_of(run.table, "sanitizer-probe"),
               Contains("not run: the machine refuses it") && Contains("Device not supported"));
    check_out_folder(run);
  }
  SECTION("elsewhere every step is a skip, the refused sanitizer is no failure, and the run exits 77") {
    const Run run = scratch.gpu_check(60, false, (scratch.tools() / "refusing-sanitizer").string());
    INFO(run.table);
    CHECK(run.outcome.exit_code == 77);
    CHECK_THAT(row_of(run.table, "smoke"), Contains("| skipped |"));
    CHECK_THAT(row_of(run.table, "dispatch"), Contains("| skipped |"));
    CHECK_THAT(row_of(run.table, "memcheck"), Contains("not run: ") && Contains("Device not supported"));
    CHECK_THAT(run.table, Contains("0 failed, ") && !Contains("FAILED"));
    check_out_folder(run);
  }
}

TEST_CASE("gpu-check: a failing smoke case stops the run and leaves the table and the log tarball",
          "[unit]") {
  Scratch scratch;
  scratch.stub_programs("pass");
  scratch.stub("test_gpu_dispatch", smoke_or("fail", "pass"));
  const Run run = scratch.gpu_check(60, true, (scratch.tools() / "sanitizer").string());
  INFO(run.table);
  CHECK(run.outcome.exit_code == 1);
  CHECK_THAT(row_of(run.table, "smoke"), Contains("FAILED (exit 1)"));
  CHECK_THAT(row_of(run.table, "smoke-memcheck"),
             Contains("FAILED"));  // the smoke case again, under memcheck
  for (const char* step : {"selftest", "dispatch", "buffer-launch", "memcheck", "gpu-copy", "overlap"})
    CHECK_THAT(row_of(run.table, step), Contains("not run: the smoke case failed"));
  CHECK_THAT(run.tarball_listing,
             Contains("logs/diagnostics/ldd.txt") && Contains("logs/smoke-memcheck.log"));
  check_out_folder(run);
}

// nvidia-smi as gpu-check asks it: the machine's line (name, memory, driver) and the driver alone.
std::string nvidia_smi_stub(const std::string& driver) {
  return "case \"$*\" in\n  *name,memory.total,driver_version*) echo 'Stub GPU, 81559 MiB, " + driver +
         "' ;;\n  *driver_version*) echo '" + driver + "' ;;\n  -L) echo 'GPU 0: Stub GPU' ;;\nesac";
}

TEST_CASE("gpu-check: a driver older than the staged CUDA runtime needs stops the run at once", "[unit]") {
  Scratch scratch;
  scratch.stub_programs("pass");
  const fs::path ran = scratch.root() / "a-test-ran";
  scratch.stub("test_gpu_dispatch", "touch " + ran.string() + "; " + behaviour("pass"));
  scratch.require_driver("13", "580.65.06");
  scratch.tool("nvidia-smi", nvidia_smi_stub("535.54.03"));
  const bool packed = GENERATE(false, true);  // packed: read beside the archive, before unpacking it
  if (packed) scratch.pack();
  const Run run = scratch.gpu_check(60, true, "none", scratch.path_first());
  INFO("packed " << packed << "\n" << run.table);
  CHECK(run.outcome.exit_code == 1);
  CHECK(run.seconds < 15);
  CHECK_THAT(row_of(run.table, "driver"),
             Contains("FAILED: driver 535.54.03 is older than 580.65.06") &&
                 Contains("the staged CUDA runtime 13 needs driver >= 580.65.06"));
  for (const char* step : {"smoke", "dispatch", "buffer-launch", "memcheck", "gpu-dispatch", "overlap"})
    CHECK_THAT(row_of(run.table, step), Contains("not run: the driver is too old"));
  CHECK_FALSE(fs::exists(ran));
  CHECK(run.out_files.count("gpu-check.md") == 1);
  CHECK(run.out_files.count("gpu-check-logs.tar.gz") == 1);
}

TEST_CASE("gpu-check: a new enough driver is said so and the run goes on", "[unit]") {
  Scratch scratch;
  scratch.stub_programs("pass");
  scratch.require_driver("13", "580.65.06");
  scratch.tool("nvidia-smi", nvidia_smi_stub("580.159.04"));
  scratch.pack();
  const Run run = scratch.gpu_check(60, true, "none", scratch.path_first());
  INFO(run.table);
  CHECK(run.outcome.exit_code == 0);
  CHECK_THAT(row_of(run.table, "driver"), Contains("| passed |") && Contains("driver 580.159.04"));
  CHECK_THAT(row_of(run.table, "smoke"), Contains("| passed |"));
}

TEST_CASE("gpu-check refuses a bad --budget by name before doing anything", "[unit]") {
  for (const char* bad : {"--budget 0", "--budget ten", "--budget", "--frobnicate"}) {
    const Outcome outcome = ferry::test::run("OUT=/nonexistent/gpu-check-out bash " + kGpuCheck + " " + bad);
    CHECK(outcome.exit_code == 2);
    CHECK_THAT(outcome.output, Contains("--budget") || Contains("--frobnicate"));
  }
}

TEST_CASE("gpu-check, gpu-stage and the GPU tests agree on program names and test filters", "[unit]") {
  const std::string manifest = std::string(FERRY_BINARY_DIR) + "/gpu-programs.txt";
  if (!fs::exists(manifest)) ferry::test::skip("this build has no CUDA: no GPU programs to compare");
  const Outcome staged = ferry::test::run("bash " + kGpuStage + " --list " + FERRY_BINARY_DIR);
  REQUIRE(staged.exit_code == 0);
  std::set<std::string> names;
  for (const std::string& line : lines_of(staged.output))
    if (line.find(' ') == std::string::npos && line.find('(') == std::string::npos) names.insert(line);
  // The programs the GPU tests start, and ferry, travel with them.
  for (const char* needed : {"ferry", "ferry_peer_rank", "ferry_gpu_rank", "test_gpu_peer"})
    CHECK(names.count(needed) == 1);
  std::map<std::string, std::string> paths;
  for (const std::string& path : lines_of(read_file(manifest)))
    paths[fs::path(path).filename().string()] = path;
  for (const auto& step : listed_steps()) {
    INFO("gpu-check step " << step[0] << " runs " << step[2]);
    if (step[2] == "test_gpu_low_latency" && names.count(step[2]) == 0)
      continue;  // optional: run when staged
    REQUIRE(names.count(step[2]) == 1);
    // Its filter selects at least one test case of the built program.
    const std::string filter = step.size() > 3 ? " '" + step[3] + "'" : "";
    const Outcome listed = ferry::test::run(paths[step[2]] + " --list-test-names-only" + filter);
    CHECK_FALSE(lines_of(listed.output).empty());
    // Under a sanitizer everything runs many times slower: no case with a timing bound there.
    if ((step[0] == "memcheck" || step[0] == "racecheck") && step.size() > 3) {
      const Outcome timed =
          ferry::test::run(paths[step[2]] + " --list-test-names-only '" + step[3] + "[timing]'");
      CHECK(lines_of(timed.output).empty());
    }
  }
}

TEST_CASE("gpu-check's Python step: built in the background, then pytest on CUDA tensors", "[unit]") {
  Scratch scratch;
  scratch.stub_programs("pass");
  scratch.stage_python();
  scratch.pack();
  const Run run = scratch.gpu_check(180, true, "none", scratch.python_env());
  INFO(run.table);
  CHECK(run.outcome.exit_code == 0);
  CHECK_THAT(row_of(run.table, "python-build"),
             Contains("| passed |") && Contains("(stub)") && Contains("torch 2.11.0 (CUDA 13.0)"));
  CHECK_THAT(row_of(run.table, "pytest-cuda"), Contains("| passed |") && Contains("5 passed, 3 skipped"));
  // On CUDA tensors, the built package first on the path, torch's CUDA runtime before the stage's libraries,
  // the staged ferry, every test of tests/python.
  const std::string ran = scratch.pytest_ran();
  CHECK_THAT(ran, Contains("FERRY_TEST_DEVICE=cuda") && Contains("LD_LIBRARY_PATH=/stub/cudart:") &&
                      Contains("/bin/ferry") && Contains("-p no:cacheprovider") && Contains("tests/python"));
  CHECK_THAT(ran, Contains("PYTHONPATH=" + (scratch.root() / "tmp").string()));
  // In the existing report: its rows above, its logs in the tarball, no new file in $OUT.
  CHECK_THAT(run.tarball_listing, Contains("logs/pytest-cuda.log") && Contains("logs/python-build.log") &&
                                      Contains("logs/python-probe.log"));
  CHECK(run.out_files == std::set<std::string>{"gpu-check.md", "gpu-check-logs.tar.gz", "figures.json"});
  // It ran after the C++ GPU tests and before the sanitizers.
  CHECK(run.table.find("| bench-library |") < run.table.find("| pytest-cuda |"));
  CHECK(run.table.find("| pytest-cuda |") < run.table.find("| memcheck |"));
}

TEST_CASE("gpu-check: a failing pytest on CUDA tensors fails the run", "[unit]") {
  Scratch scratch;
  scratch.stub_programs("pass");
  scratch.stage_python();
  const Run run = scratch.gpu_check(180, true, "none", scratch.python_env() + " FERRY_STUB_PYTEST=fail");
  INFO(run.table);
  CHECK(run.outcome.exit_code == 1);
  CHECK_THAT(row_of(run.table, "pytest-cuda"), Contains("FAILED (exit 1)") && Contains("1 failed, 4 passed"));
  CHECK_THAT(row_of(run.table, "gpu-dispatch"), Contains("| passed |"));  // the rest still ran
  CHECK_THAT(run.table, Contains("1 failed, 0 skipped"));
}

TEST_CASE("gpu-check: the Python step says why it did not run, and never eats the budget", "[unit]") {
  Scratch scratch;
  scratch.stub_programs("pass");
  scratch.stage_python();
  SECTION("python3 lacks torch, or its torch lacks CUDA: a skip naming it; pytest never runs") {
    const std::pair<const char*, const char*> cases[] = {{"no-torch", "has no torch (ModuleNotFoundError"},
                                                         {"no-cuda", "torch.cuda.is_available() is False"}};
    for (const auto& [stub, words] : cases) {
      const Run run =
          scratch.gpu_check(180, true, "none", scratch.python_env() + " FERRY_STUB_TORCH=" + stub);
      INFO(stub << "\n" << run.table);
      CHECK(run.outcome.exit_code == 77);
      CHECK_THAT(row_of(run.table, "pytest-cuda"),
                 Contains("skipped: no torch with CUDA") && Contains(words));
      CHECK(scratch.pytest_ran().empty());
      CHECK_THAT(run.table, Contains("0 failed, 1 skipped"));
    }
  }
  SECTION("no Python.h for the interpreter: the build is a skip naming why") {
    const Run run = scratch.gpu_check(180, true, "none", scratch.python_env() + " FERRY_STUB_BUILD=notrun");
    INFO(run.table);
    CHECK(run.outcome.exit_code == 77);
    CHECK_THAT(row_of(run.table, "python-build"),
               Contains("skipped: cannot build here") && Contains("no Python.h"));
    CHECK_THAT(row_of(run.table, "pytest-cuda"), Contains("not run: the package was not built"));
    CHECK(scratch.pytest_ran().empty());
  }
  SECTION("a build that fails fails the run") {
    const Run run = scratch.gpu_check(180, true, "none", scratch.python_env() + " FERRY_STUB_BUILD=fail");
    INFO(run.table);
    CHECK(run.outcome.exit_code == 1);
    CHECK_THAT(row_of(run.table, "python-build"), Contains("FAILED (exit 1)") && Contains("did not compile"));
    CHECK(scratch.pytest_ran().empty());
  }
  SECTION("a budget whose third is under what the step needs: not run, saying so; the rest runs") {
    const Run run = scratch.gpu_check(120, true, "none", scratch.python_env());
    INFO(run.table);
    CHECK(run.outcome.exit_code == 0);
    CHECK_THAT(row_of(run.table, "pytest-cuda"),
               Contains("not run: budget short") && Contains("a third of the 120 s budget, is 40 s"));
    CHECK(scratch.pytest_ran().empty());
    CHECK_THAT(row_of(run.table, "gpu-copy"), Contains("| passed |"));
  }
}
