// Jobs started by other launchers (torchrun, Open MPI, Slurm) that give ferry no secret: the ranks are
// started here by hand with those launchers' variables, each running `ferry topo`. A one-node job gets a
// secret from its rank 0 (over a private file, the store on loopback only); a job on several nodes is refused
// at once with the way out; an empty FERRY_SECRET is refused too.
#include <dirent.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include "common/loopback.hpp"
#include "common/rank_processes.hpp"
#include "launch_harness.hpp"

using namespace launch_test;

namespace {

using ferry::test::Vars;

struct RankRun {
  int exit_code = -1;
  std::string output;  // stdout and stderr
};

// A port that was free a moment ago (the store of these jobs binds MASTER_PORT + 1 itself).
int free_port() {
  return ferry::test::free_loopback_port();
}

// Starts one `ferry topo` per entry of `ranks` (rank_processes.hpp says with which environment), the last
// one `last_late_by` after the others, and waits (at most `limit`) for all.
std::vector<RankRun> run_topo(const std::vector<Vars>& ranks, std::chrono::seconds limit = 30s,
                              std::chrono::milliseconds last_late_by = 0ms) {
  TempDir dir;
  ferry::test::RankProcesses processes(dir.path());
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    if (r + 1 == ranks.size()) std::this_thread::sleep_for(last_late_by);
    processes.start({FERRY_BIN, "topo"}, ranks[r]);
  }
  std::vector<RankRun> runs(ranks.size());
  const auto deadline = Clock::now() + limit;
  for (std::size_t r = 0; r < ranks.size(); ++r) {
    const ferry::test::RankExit exit = processes.wait(r, deadline);
    runs[r].exit_code = exit.exit_code;
    runs[r].output = exit.output;
  }
  return runs;
}

Vars torchrun(int rank, int world, int local_world, int master_port) {
  return ferry::test::torchrun_vars(rank, world, local_world, master_port);
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

// A second process claiming a rank used to be accepted: it joined, the job "passed", and the real rank
// failed blaming rank 0. Rank 2 of 3 never starts, so the job can only end by the refusal, which reaches
// every process: the second claim comes a second after the others, while they wait for rank 2. (A process
// that starts after the job has ended finds no store, and waits for its bootstrap timeout.)
TEST_CASE("foreign launchers: a rank claimed twice is refused on every process, naming it",
          "[launch][failure]") {
  const int master_port = free_port() - 1;
  for (int twice : {1, 0}) {
    INFO("rank " << twice << " started twice");
    std::vector<Vars> ranks{torchrun(0, 3, 3, master_port), torchrun(1, 3, 3, master_port),
                            torchrun(twice, 3, 3, master_port)};
    const auto start = Clock::now();
    for (const auto& run : run_topo(ranks, 30s, 1000ms)) {
      INFO(run.output);
      CHECK(run.exit_code != 0);
      CHECK_THAT(run.output, Catch::Contains("rank " + std::to_string(twice) + " is claimed twice"));
    }
    CHECK(Clock::now() - start < 15s);  // not the bootstrap timeout
  }
}

TEST_CASE("foreign launchers: ranks that disagree on WORLD_SIZE are refused on every process",
          "[launch][failure]") {
  const int master_port = free_port() - 1;
  // Rank 3 believes in 4 ranks (the others in 3) and starts a second later, while the others wait for rank
  // 2 (which never starts): the first joiners' world is the reference.
  auto runs = run_topo(
      {torchrun(0, 3, 3, master_port), torchrun(1, 3, 3, master_port), torchrun(3, 4, 4, master_port)}, 30s,
      1000ms);
  for (const auto& run : runs) {
    INFO(run.output);
    CHECK(run.exit_code != 0);
    CHECK_THAT(run.output, Catch::Contains("ranks disagree on the world size"));
  }
}
