// Jobs started by other launchers (torchrun, Open MPI, Slurm) that give ferry no secret: the ranks are
// started here by hand with those launchers' variables, each running `ferry topo`. A one-node job gets a
// secret from its rank 0 (over a private file, the store on loopback only); a job on several nodes is refused
// at once with the way out; an empty FERRY_SECRET is refused too.
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <map>
#include <string>
#include <vector>

#include "common/loopback.hpp"
#include "launch_harness.hpp"

using namespace launch_test;

extern char** environ;

namespace {

using Vars = std::map<std::string, std::string>;

struct RankRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// A port that was free a moment ago (the store of these jobs binds MASTER_PORT + 1 itself).
int free_port() {
  return ferry::test::free_loopback_port();
}

// Whether `entry` ("NAME=value") sets a variable a launcher sets: those come from the test alone.
bool is_launcher_variable(const std::string& entry) {
  const std::string name = entry.substr(0, entry.find('='));
  for (const char* prefix : {"FERRY_", "OMPI_", "PMIX_", "SLURM_", "TORCHELASTIC_"}) {
    if (name.rfind(prefix, 0) == 0) return true;
  }
  for (const char* exact :
       {"RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"}) {
    if (name == exact) return true;
  }
  return false;
}

// Starts one `ferry topo` per entry of `ranks`, each with the test's environment (sanitizer settings
// included) less every launcher's variables, plus those of the entry, and waits (at most `limit`) for all.
std::vector<RankRun> run_topo(const std::vector<Vars>& ranks, std::chrono::seconds limit = 30s) {
  TempDir dir;
  std::vector<pid_t> pids;
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    std::vector<std::string> environment;
    for (char** entry = environ; *entry != nullptr; ++entry) {
      if (!is_launcher_variable(*entry)) environment.push_back(*entry);
    }
    for (const auto& [name, value] : ranks[r]) environment.push_back(name + "=" + value);
    std::vector<char*> envp;
    for (auto& entry : environment) envp.push_back(entry.data());
    envp.push_back(nullptr);
    std::string bin = FERRY_BIN, topo = "topo";
    char* argv[] = {bin.data(), topo.data(), nullptr};
    const std::string log = dir.path() + "/rank" + std::to_string(r);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0600);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    pid_t pid = -1;
    REQUIRE(::posix_spawn(&pid, bin.c_str(), &actions, nullptr, argv, envp.data()) == 0);
    posix_spawn_file_actions_destroy(&actions);
    pids.push_back(pid);
  }
  std::vector<RankRun> runs(ranks.size());
  const auto deadline = Clock::now() + limit;
  for (std::size_t r = 0; r < pids.size(); ++r) {
    int status = 0;
    while (::waitpid(pids[r], &status, WNOHANG) == 0) {
      if (Clock::now() >= deadline) {
        ::kill(pids[r], SIGKILL);
        ::waitpid(pids[r], &status, 0);
        break;
      }
      std::this_thread::sleep_for(10ms);
    }
    runs[r].exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    runs[r].output = read_file(dir.path() + "/rank" + std::to_string(r));
  }
  return runs;
}

Vars torchrun(int rank, int world, int local_world, int master_port) {
  return {{"RANK", std::to_string(rank)},
          {"WORLD_SIZE", std::to_string(world)},
          {"LOCAL_RANK", std::to_string(rank % local_world)},
          {"LOCAL_WORLD_SIZE", std::to_string(local_world)},
          {"MASTER_ADDR", "localhost"},
          {"MASTER_PORT", std::to_string(master_port)},
          {"TORCHELASTIC_RUN_ID", "none"}};
}

// Hand-over files of the store on `port` still in the private directory.
std::vector<std::string> handoff_files(int port) {
  std::vector<std::string> found;
  const std::string dir = "/tmp/ferry-" + std::to_string(::geteuid());
  const std::string prefix = "store-" + std::to_string(port) + "-";
  if (DIR* handle = ::opendir(dir.c_str())) {
    while (dirent* entry = ::readdir(handle)) {
      if (std::string(entry->d_name).rfind(prefix, 0) == 0) found.push_back(entry->d_name);
    }
    ::closedir(handle);
  }
  return found;
}

}  // namespace

TEST_CASE("foreign launchers: a one-node torchrun job without FERRY_SECRET runs on rank 0's secret",
          "[launch][security]") {
  const int master_port = free_port() - 1;
  auto runs = run_topo({torchrun(0, 2, 2, master_port), torchrun(1, 2, 2, master_port)});
  for (const auto& run : runs) {
    INFO(run.output);
    CHECK(run.exit_code == 0);
  }
  CHECK_THAT(runs[0].output, Catch::Contains("2 ranks = 1 node(s) x 2 rank(s) per node  [torchrun"));
  // The store listened on loopback only, whatever MASTER_ADDR said: the ranks reached it there.
  CHECK(lines_starting_with(runs[0].output, "0     0     0").size() == 1);
  CHECK_THAT(runs[0].output, Catch::Contains("127.0.0.1"));
  CHECK(handoff_files(master_port + 1).empty());
}

TEST_CASE("foreign launchers: a job on several nodes without FERRY_SECRET is refused on every rank",
          "[launch][security]") {
  const int master_port = free_port() - 1;
  auto start = Clock::now();
  auto runs = run_topo({torchrun(0, 2, 1, master_port), torchrun(1, 2, 1, master_port)});
  CHECK(Clock::now() - start < 10s);  // refused before anyone waits for anyone
  for (const auto& run : runs) {
    INFO(run.output);
    CHECK(run.exit_code != 0);
    CHECK_THAT(run.output, Catch::Contains("torchrun job on 2 nodes without FERRY_SECRET"));
    CHECK_THAT(run.output, Catch::Contains("export FERRY_SECRET="));
  }
  // With one, the same job runs.
  auto with_secret = run_topo({[&] {
                                 auto vars = torchrun(0, 2, 1, master_port);
                                 vars["FERRY_SECRET"] = "a-secret-the-user-chose";
                                 return vars;
                               }(),
                               [&] {
                                 auto vars = torchrun(1, 2, 1, master_port);
                                 vars["FERRY_SECRET"] = "a-secret-the-user-chose";
                                 return vars;
                               }()});
  for (const auto& run : with_secret) {
    INFO(run.output);
    CHECK(run.exit_code == 0);
  }
  CHECK_THAT(with_secret[0].output, Catch::Contains("2 ranks = 2 node(s) x 1 rank(s) per node"));
}

TEST_CASE("foreign launchers: an empty FERRY_SECRET is refused, not taken as no authentication",
          "[launch][security]") {
  const int port = free_port();
  std::vector<Vars> ranks;
  for (int rank = 0; rank < 2; ++rank) {
    ranks.push_back({{"OMPI_COMM_WORLD_RANK", std::to_string(rank)},
                     {"OMPI_COMM_WORLD_SIZE", "2"},
                     {"OMPI_COMM_WORLD_LOCAL_RANK", std::to_string(rank)},
                     {"OMPI_COMM_WORLD_LOCAL_SIZE", "2"},
                     {"FERRY_STORE", "127.0.0.1:" + std::to_string(port)},
                     {"FERRY_SECRET", ""}});
  }
  for (const auto& run : run_topo(ranks)) {
    INFO(run.output);
    CHECK(run.exit_code != 0);
    CHECK_THAT(run.output, Catch::Contains("FERRY_SECRET is set but empty"));
  }
}
