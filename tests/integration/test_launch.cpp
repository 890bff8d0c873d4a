// `ferry launch` without namespaces: the environment every rank gets, output relaying, failure propagation,
// timeouts and signals, and that no process outlives the launcher.
#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <map>
#include <set>

#include "common/scoped_env.hpp"
#include "launch_harness.hpp"

using namespace launch_test;

namespace {

std::vector<std::string> sh(const std::string& script) {
  return {"sh", "-c", script};
}

std::vector<std::string> args(std::vector<std::string> options, const std::vector<std::string>& command) {
  options.push_back("--");
  options.insert(options.end(), command.begin(), command.end());
  return options;
}

// Whether `text` is non-empty and made only of characters in `allowed`.
bool all_of_chars(const std::string& text, const std::string& allowed) {
  return !text.empty() && text.find_first_not_of(allowed) == std::string::npos;
}

std::vector<std::string> split(const std::string& line) {
  std::istringstream in(line);
  std::vector<std::string> words;
  for (std::string word; in >> word;) words.push_back(word);
  return words;
}

// The pids written into the files of `dir`, one per file.
std::vector<pid_t> pids_in(const std::string& dir) {
  std::vector<pid_t> pids;
  DIR* handle = ::opendir(dir.c_str());
  REQUIRE(handle != nullptr);
  while (dirent* entry = ::readdir(handle)) {
    if (entry->d_name[0] == '.') continue;
    auto text = read_file(dir + "/" + entry->d_name);
    if (!text.empty()) pids.push_back(static_cast<pid_t>(std::stol(text)));
  }
  ::closedir(handle);
  return pids;
}

}  // namespace

TEST_CASE("launch: every rank gets its identity and the job's store and secret from the environment",
          "[launch]") {
  ferry::test::ScopedEnv outer_rank("FERRY_RANK",
                                    "99");  // a stale variable from outside must not leak into the ranks
  ferry::test::ScopedEnv user_threads("OMP_NUM_THREADS", "7");  // a user's choice is kept
  auto result =
      launch(args({"--nodes", "2", "--ranks-per-node", "3"},
                  sh("echo id $FERRY_RANK $FERRY_LOCAL_RANK $FERRY_NODE $FERRY_WORLD_SIZE "
                     "$FERRY_LOCAL_WORLD_SIZE $FERRY_NUM_NODES $FERRY_NODE_ADDR $FERRY_STORE "
                     "$FERRY_SECRET $FERRY_JOB_ID $FERRY_LAUNCHER $OPENBLAS_NUM_THREADS $OMP_NUM_THREADS")));
  INFO(result.describe());
  REQUIRE(result.exit_code == 0);
  CHECK(result.err.empty());

  std::set<int> ranks_seen;
  std::set<std::string> stores, secrets, job_ids;
  for (int rank = 0; rank < 6; ++rank) {
    auto lines = lines_starting_with(result.out, "[r" + std::to_string(rank) + "] id ");
    REQUIRE(lines.size() == 1);
    auto words = split(lines[0]);
    REQUIRE(words.size() == 15);
    CHECK(words[2] == std::to_string(rank));      // FERRY_RANK
    CHECK(words[3] == std::to_string(rank % 3));  // FERRY_LOCAL_RANK
    CHECK(words[4] == std::to_string(rank / 3));  // FERRY_NODE
    CHECK(words[5] == "6");
    CHECK(words[6] == "3");
    CHECK(words[7] == "2");
    CHECK(words[8] == "127.0.0.1");
    CHECK(words[9].rfind("127.0.0.1:", 0) == 0);
    CHECK(all_of_chars(words[9].substr(std::string("127.0.0.1:").size()), "0123456789"));
    CHECK(words[10].size() == 32);
    CHECK(all_of_chars(words[10], "0123456789abcdef"));
    CHECK(words[11].rfind("ferry-", 0) == 0);
    CHECK(words[12] == "1");
    CHECK(words[13] == "1");
    CHECK(words[14] == "7");
    ranks_seen.insert(std::stoi(words[2]));
    stores.insert(words[9]);
    secrets.insert(words[10]);
    job_ids.insert(words[11]);
  }
  CHECK(ranks_seen.size() == 6);
  CHECK(stores.size() == 1);
  CHECK(secrets.size() == 1);
  CHECK(job_ids.size() == 1);
  CHECK(lines_starting_with(result.out, "").size() == 6);

  // A second job gets a secret and a job id of its own.
  auto again = launch(args({}, sh("echo $FERRY_SECRET $FERRY_JOB_ID")));
  REQUIRE(again.exit_code == 0);
  auto words = split(again.out);
  REQUIRE(words.size() == 3);
  CHECK(secrets.count(words[1]) == 0);
  CHECK(job_ids.count(words[2]) == 0);
}

TEST_CASE("launch: every rank also gets torchrun's variables, for torch.distributed", "[launch]") {
  ferry::test::ScopedEnv outer_rank("RANK",
                                    "99");  // a stale variable from outside must not leak into the ranks
  auto result =
      launch(args({"--nodes", "2", "--ranks-per-node", "2"},
                  sh("echo id $RANK $WORLD_SIZE $LOCAL_RANK $LOCAL_WORLD_SIZE $GROUP_RANK $MASTER_ADDR "
                     "$MASTER_PORT $FERRY_STORE")));
  INFO(result.describe());
  REQUIRE(result.exit_code == 0);
  std::set<std::string> master_ports;
  for (int rank = 0; rank < 4; ++rank) {
    auto lines = lines_starting_with(result.out, "[r" + std::to_string(rank) + "] id ");
    REQUIRE(lines.size() == 1);
    auto words = split(lines[0]);
    REQUIRE(words.size() == 10);
    CHECK(words[2] == std::to_string(rank));
    CHECK(words[3] == "4");
    CHECK(words[4] == std::to_string(rank % 2));
    CHECK(words[5] == "2");
    CHECK(words[6] == std::to_string(rank / 2));
    CHECK(words[7] == "127.0.0.1");
    CHECK(all_of_chars(words[8], "0123456789"));
    CHECK(words[9] != "127.0.0.1:" + words[8]);  // torch's rendezvous is not ferry's store
    master_ports.insert(words[8]);
  }
  CHECK(master_ports.size() == 1);
}

TEST_CASE("launch: the store's port is bound once and handed to rank 0, never free for another process",
          "[launch][security]") {
  ferry::test::ScopedEnv outer("FERRY_STORE_FD", "5");  // from an enclosing job: must not reach any rank
  LaunchProcess process(
      args({"--nodes", "1", "--ranks-per-node", "3"},
           sh("if [ -n \"$FERRY_STORE_FD\" ]; then "
              "echo fd $FERRY_RANK $FERRY_STORE_FD $(readlink /proc/$$/fd/$FERRY_STORE_FD); "
              "else echo nofd $FERRY_RANK; fi; echo store $FERRY_STORE; sleep 1")));
  REQUIRE(process.wait_for_output("store ", 3, 20s));
  // While the job runs, the store's port is taken: nobody else can bind it and receive the ranks' HELLOs.
  auto store_lines = lines_starting_with(process.out(), "[r0] store 127.0.0.1:");
  REQUIRE(store_lines.size() == 1);
  const int port = std::stoi(store_lines[0].substr(std::string("[r0] store 127.0.0.1:").size()));
  int probe = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(probe >= 0);
  sockaddr_in address{};
  address.sin_family = AF_INET;
  address.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  address.sin_port = htons(static_cast<std::uint16_t>(port));
  const int bound = ::bind(probe, reinterpret_cast<sockaddr*>(&address), sizeof(address));
  const int bind_error = errno;
  ::close(probe);
  CHECK(bound != 0);
  CHECK(bind_error == EADDRINUSE);

  auto result = process.finish();
  INFO(result.describe());
  REQUIRE(result.exit_code == 0);
  auto fd_lines = lines_starting_with(result.out, "[r0] fd 0 ");
  REQUIRE(fd_lines.size() == 1);
  CHECK_THAT(fd_lines[0], Catch::Contains("socket:["));
  CHECK(lines_starting_with(result.out, "[r1] nofd 1").size() == 1);
  CHECK(lines_starting_with(result.out, "[r2] nofd 2").size() == 1);
}

TEST_CASE("launch: ferry topo prints nothing that lets someone into the store", "[launch][security]") {
  TempDir dir;
  const std::string json = dir.path() + "/topo.json";
  auto result = launch(args({"--nodes", "2", "--ranks-per-node", "1"},
                            sh("echo secret $FERRY_SECRET; exec " FERRY_BIN " topo --json " + json)));
  INFO(result.describe());
  REQUIRE(result.exit_code == 0);
  auto secret_lines = lines_starting_with(result.out, "[r0] secret ");
  REQUIRE(secret_lines.size() == 1);
  const std::string secret = secret_lines[0].substr(std::string("[r0] secret ").size());
  REQUIRE(secret.size() == 32);
  std::string printed = result.err + read_file(json);  // everything but the test's own echo lines
  std::istringstream lines(result.out);
  for (std::string line; std::getline(lines, line);) {
    if (line.find("] secret ") == std::string::npos) printed += line + "\n";
  }
  CHECK_THAT(printed, Catch::Contains("ferry topology"));
  CHECK(printed.find(secret) == std::string::npos);
  CHECK(printed.find(secret.substr(0, 8)) == std::string::npos);
}

TEST_CASE("launch: stdout and stderr are relayed line by line with the rank's prefix", "[launch]") {
  const auto script = sh("echo out$FERRY_RANK; echo err$FERRY_RANK >&2; printf tail$FERRY_RANK");
  SECTION("with prefixes") {
    auto result = launch(args({"--ranks-per-node", "2"}, script));
    INFO(result.describe());
    REQUIRE(result.exit_code == 0);
    for (std::string rank : {"0", "1"}) {
      CHECK(lines_starting_with(result.out, "[r" + rank + "] out" + rank).size() == 1);
      CHECK(lines_starting_with(result.err, "[r" + rank + "] err" + rank).size() == 1);
      // The last line has no newline: it is completed when the rank's stream ends.
      CHECK(lines_starting_with(result.out, "[r" + rank + "] tail" + rank).size() == 1);
      CHECK(result.out.find("err" + rank) == std::string::npos);
      CHECK(result.err.find("out" + rank) == std::string::npos);
    }
    CHECK(result.out.back() == '\n');
  }
  SECTION("--no-prefix passes lines through") {
    auto result = launch(args({"--no-prefix"}, script));
    INFO(result.describe());
    REQUIRE(result.exit_code == 0);
    CHECK(result.out == "out0\ntail0\n");
    CHECK(result.err == "err0\n");
  }
}

TEST_CASE("launch: heavy output of many ranks arrives complete and one whole line at a time", "[launch]") {
  constexpr int kLines = 20000;
  auto result = launch(args({"--nodes", "2", "--ranks-per-node", "2"},
                            sh("seq 1 " + std::to_string(kLines) + " | sed \"s/^/line $FERRY_RANK /\"")));
  INFO("exit " << result.exit_code << "\nstderr:\n" << result.err);
  REQUIRE(result.exit_code == 0);
  std::map<std::string, int> lines_per_rank;
  std::istringstream in(result.out);
  int malformed = 0;
  for (std::string line; std::getline(in, line);) {
    // "[rN] line N <number>", the same N twice: the launcher's prefix on the rank's own, whole line.
    const std::string rank = line.size() > 2 ? line.substr(2, 1) : "";
    const std::string prefix = "[r" + rank + "] line " + rank + " ";
    if (rank.empty() || rank[0] < '0' || rank[0] > '3' || line.rfind(prefix, 0) != 0 ||
        !all_of_chars(line.substr(prefix.size()), "0123456789")) {
      ++malformed;
      continue;
    }
    ++lines_per_rank[rank];
  }
  CHECK(malformed == 0);
  for (std::string rank : {"0", "1", "2", "3"}) CHECK(lines_per_rank[rank] == kLines);
}

TEST_CASE("launch: a failing rank stops the job with its status and leaves no process behind", "[launch]") {
  TempDir dir;
  // Ranks 0, 1, 3 record their pid and a child's, then wait; rank 2 fails once all six pids are written.
  const std::string script = "cd " + dir.path() +
                             "; if [ \"$FERRY_RANK\" = 2 ]; then"
                             "   while [ \"$(ls | wc -l)\" -lt 6 ]; do sleep 0.05; done; exit 3;"
                             " fi;"
                             " sleep 100 & echo $! > child.$FERRY_RANK; echo $$ > rank.$FERRY_RANK; wait";
  auto result = launch(args({"--nodes", "2", "--ranks-per-node", "2", "--timeout", "30"}, sh(script)));
  INFO(result.describe());
  CHECK(result.exit_code == 3);
  CHECK(result.seconds < 10);
  CHECK(result.err.find("ferry launch: rank 2 exited with status 3; stopping the other ranks") !=
        std::string::npos);
  auto pids = pids_in(dir.path());
  CHECK(pids.size() == 6);
  for (pid_t pid : pids) {
    INFO("pid " << pid);
    CHECK_FALSE(process_alive(pid));
  }
}

TEST_CASE("launch: with --keep-going a failing rank does not stop the others, its status is the job's",
          "[launch]") {
  auto result = launch(args({"--ranks-per-node", "3", "--keep-going", "--timeout", "30"},
                            sh("if [ \"$FERRY_RANK\" = 1 ]; then exit 3; fi; sleep 1; echo survived")));
  INFO(result.describe());
  CHECK(result.exit_code == 3);
  CHECK(result.err.find("rank 1 exited with status 3; the other ranks go on (--keep-going)") !=
        std::string::npos);
  CHECK(result.out.find("[r0] survived") != std::string::npos);
  CHECK(result.out.find("[r2] survived") != std::string::npos);
  CHECK(result.err.find("stopping the other ranks") == std::string::npos);
}

TEST_CASE("launch: a rank killed by a signal stops the job with 128 + signal", "[launch]") {
  auto result = launch(args({"--ranks-per-node", "3", "--timeout", "30"},
                            sh("if [ \"$FERRY_RANK\" = 1 ]; then kill -USR1 $$; fi; exec sleep 100")));
  INFO(result.describe());
  CHECK(result.exit_code == 128 + SIGUSR1);
  CHECK(result.seconds < 10);
  CHECK(result.err.find("rank 1 exited with signal SIGUSR1") != std::string::npos);
}

TEST_CASE("launch: the timeout stops a job that runs too long with status 124", "[launch]") {
  auto result = launch(args({"--ranks-per-node", "2", "--timeout", "1"}, {"sleep", "100"}));
  INFO(result.describe());
  CHECK(result.exit_code == 124);
  CHECK(result.seconds < 6);
  CHECK(result.err.find("timeout of 1 s expired with ranks 0 1 still running") != std::string::npos);
}

// Timing claims are made against a grace period far longer than the job takes even on a loaded machine: ranks
// that obey finish long before it, and a launcher that waited for it (or killed) is far past the bound.
constexpr double kLongGrace = 30;

TEST_CASE("launch: SIGTERM to the launcher is forwarded to every rank", "[launch]") {
  LaunchProcess process(args({"--nodes", "2", "--ranks-per-node", "2", "--timeout", "60", "--grace",
                              std::to_string(int(kLongGrace))},
                             sh("trap 'echo got-TERM; exit 0' TERM; sleep 100 & echo ready; wait")));
  REQUIRE(process.wait_for_output("ready", 4, std::chrono::seconds(20)));
  auto signalled = Clock::now();
  REQUIRE(::kill(process.pid(), SIGTERM) == 0);
  auto result = process.finish();
  INFO(result.describe());
  CHECK(result.exit_code == 128 + SIGTERM);
  CHECK(lines_starting_with(result.out, "[r").size() == 8);  // "ready" and "got-TERM" from each rank
  for (int rank = 0; rank < 4; ++rank) {
    CHECK(lines_starting_with(result.out, "[r" + std::to_string(rank) + "] got-TERM").size() == 1);
  }
  CHECK(result.err.find("received SIGTERM; forwarding it to the ranks") != std::string::npos);
  // The ranks obeyed: the launcher neither killed them nor waited for the grace period.
  CHECK(std::chrono::duration<double>(Clock::now() - signalled).count() < kLongGrace / 2);
}

TEST_CASE("launch: ranks that ignore the forwarded signal are killed after the grace period", "[launch]") {
  const auto stubborn = sh("trap '' TERM INT; echo ready; exec sleep 100");
  SECTION("SIGKILL follows after about 3 s") {
    LaunchProcess process(args({"--ranks-per-node", "2"}, stubborn));
    REQUIRE(process.wait_for_output("ready", 2, std::chrono::seconds(20)));
    auto signalled = Clock::now();
    REQUIRE(::kill(process.pid(), SIGTERM) == 0);
    auto result = process.finish();
    INFO(result.describe());
    auto waited = std::chrono::duration<double>(Clock::now() - signalled).count();
    CHECK(result.exit_code == 128 + SIGTERM);
    CHECK(waited > 2.5);
    CHECK(waited < 3 + 12);  // the ranks' `sleep 100` would run on without the SIGKILL
  }
  SECTION("a second signal kills at once") {
    LaunchProcess process(
        args({"--ranks-per-node", "2", "--grace", std::to_string(int(kLongGrace))}, stubborn));
    REQUIRE(process.wait_for_output("ready", 2, std::chrono::seconds(20)));
    auto signalled = Clock::now();
    REQUIRE(::kill(process.pid(), SIGINT) == 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    REQUIRE(::kill(process.pid(), SIGINT) == 0);
    auto result = process.finish();
    INFO(result.describe());
    CHECK(result.exit_code == 128 + SIGINT);
    CHECK(std::chrono::duration<double>(Clock::now() - signalled).count() < kLongGrace / 2);  // not the grace
    CHECK(result.err.find("received SIGINT again; killing the ranks") != std::string::npos);
  }
}

TEST_CASE("launch: a command that cannot be run fails like a shell would", "[launch]") {
  auto result = launch(args({"--ranks-per-node", "2"}, {"/nonexistent/ferry-test-command"}));
  INFO(result.describe());
  CHECK(result.exit_code == 127);
  CHECK(result.err.find("cannot execute '/nonexistent/ferry-test-command'") != std::string::npos);
}

TEST_CASE("launch: bad options are refused before anything starts", "[launch]") {
  SECTION("zero nodes") {
    CHECK(launch(args({"--nodes", "0"}, {"true"})).exit_code != 0);
  }
  SECTION("no command") {
    CHECK(launch({"--nodes", "1"}).exit_code != 0);
  }
  SECTION("--link-gbps without --netns") {
    auto result = launch(args({"--link-gbps", "1"}, {"true"}));
    INFO(result.describe());
    CHECK(result.exit_code != 0);
    CHECK(result.err.find("--netns") != std::string::npos);
  }
  SECTION("--drop-rate without --netns, or outside (0, 1)") {
    auto result = launch(args({"--drop-rate", "0.01"}, {"true"}));
    INFO(result.describe());
    CHECK(result.exit_code != 0);
    CHECK(result.err.find("--netns") != std::string::npos);
    for (const char* rate : {"0", "1", "-0.5", "lots"}) {
      auto bad = launch(args({"--netns", "--drop-rate", rate}, {"true"}));
      INFO(bad.describe());
      CHECK(bad.exit_code != 0);
      CHECK(bad.err.find("--drop-rate") != std::string::npos);
    }
  }
  SECTION("a job that runs fine exits 0") {
    CHECK(launch(args({"--nodes", "3"}, {"true"})).exit_code == 0);
  }
}
