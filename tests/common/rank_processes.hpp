// Ranks started by a test itself, without any launcher: each a process with the test's environment (sanitizer
// settings included) less every launcher's variables, plus the ones the test gives it (RANK, WORLD_SIZE...,
// or FERRY_*), its stdout and stderr in a file of its own. For tests of what ferry does when no launcher
// watches over the job (torchrun-style environments by hand, FERRY_* by hand).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

extern char** environ;

namespace ferry::test {

using Vars = std::map<std::string, std::string>;

// Whether `entry` ("NAME=value") sets a variable some launcher sets: those come from the test alone.
inline bool is_launcher_variable(const std::string& entry) {
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

// torchrun's variables for `rank` of `world` ranks, `local_world` per node; the store listens on
// master_port + 1.
inline Vars torchrun_vars(int rank, int world, int local_world, int master_port) {
  return {{"RANK", std::to_string(rank)},
          {"WORLD_SIZE", std::to_string(world)},
          {"LOCAL_RANK", std::to_string(rank % local_world)},
          {"LOCAL_WORLD_SIZE", std::to_string(local_world)},
          {"MASTER_ADDR", "localhost"},
          {"MASTER_PORT", std::to_string(master_port)},
          {"TORCHELASTIC_RUN_ID", "none"}};
}

struct RankExit {
  int exit_code = -1;  // the exit status, or 128 + signal
  std::string output;  // stdout and stderr
  bool killed_at_deadline = false;
};

// Processes started by the test; whatever still runs when this goes out of scope is killed and reaped.
class RankProcesses {
 public:
  explicit RankProcesses(std::string log_dir) : log_dir_(std::move(log_dir)) {}
  ~RankProcesses() {
    for (pid_t pid : pids_) {
      if (pid > 0 && ::waitpid(pid, nullptr, WNOHANG) == 0) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
      }
    }
  }
  RankProcesses(const RankProcesses&) = delete;
  RankProcesses& operator=(const RankProcesses&) = delete;

  // Starts `argv` (argv[0] is the program) with `vars`; returns its index.
  std::size_t start(const std::vector<std::string>& argv, const Vars& vars) {
    std::vector<std::string> environment;
    for (char** entry = environ; *entry != nullptr; ++entry) {
      if (!is_launcher_variable(*entry)) environment.push_back(*entry);
    }
    for (const auto& [name, value] : vars) environment.push_back(name + "=" + value);
    std::vector<char*> envp;
    for (auto& entry : environment) envp.push_back(entry.data());
    envp.push_back(nullptr);
    std::vector<std::string> args = argv;
    std::vector<char*> argp;
    for (auto& arg : args) argp.push_back(arg.data());
    argp.push_back(nullptr);
    const std::string log = log_path(pids_.size());
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, STDOUT_FILENO, log.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0600);
    posix_spawn_file_actions_adddup2(&actions, STDOUT_FILENO, STDERR_FILENO);
    pid_t pid = -1;
    const int spawned = ::posix_spawn(&pid, args[0].c_str(), &actions, nullptr, argp.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    REQUIRE(spawned == 0);
    pids_.push_back(pid);
    return pids_.size() - 1;
  }

  pid_t pid(std::size_t index) const { return pids_.at(index); }

  // Waits for process `index` until `deadline`; kills it then. Once per process.
  RankExit wait(std::size_t index, std::chrono::steady_clock::time_point deadline) {
    RankExit exit;
    int status = 0;
    const pid_t pid = pids_.at(index);
    while (::waitpid(pid, &status, WNOHANG) == 0) {
      if (std::chrono::steady_clock::now() >= deadline) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, &status, 0);
        exit.killed_at_deadline = true;
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    pids_.at(index) = -1;
    exit.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    exit.output = output(index);
    return exit;
  }

  std::string output(std::size_t index) const {
    std::ifstream in(log_path(index));
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

 private:
  std::string log_path(std::size_t index) const { return log_dir_ + "/rank" + std::to_string(index); }

  std::string log_dir_;
  std::vector<pid_t> pids_;
};

}  // namespace ferry::test
