// Runs `ferry launch ...` as a child of the test, capturing its stdout and stderr separately, with a
// deadline.
#pragma once

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "common/netns.hpp"

namespace launch_test {

using Clock = std::chrono::steady_clock;
using namespace std::chrono_literals;

// "a b" -> "a b", for messages.
inline std::string joined(const std::vector<std::string>& args) {
  std::string out;
  for (const auto& arg : args) out += (out.empty() ? "" : " ") + arg;
  return out;
}

struct LaunchResult {
  std::vector<std::string> args;
  int exit_code = -1;  // the exit status, or 128 + signal when the launcher itself was killed by one
  std::string out;
  std::string err;
  double seconds = 0;

  // Everything about the run, for INFO() so that a failing check shows it.
  std::string describe() const {
    std::ostringstream text;
    text << "ferry launch " << joined(args) << "\nexit " << exit_code << " after " << seconds
         << " s\nstdout:\n"
         << out << "\nstderr:\n"
         << err;
    return text.str();
  }
};

// The lines of `text` that start with `prefix`.
inline std::vector<std::string> lines_starting_with(const std::string& text, const std::string& prefix) {
  std::vector<std::string> lines;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind(prefix, 0) == 0) lines.push_back(line);
  }
  return lines;
}

using ferry::test::shell_output;  // stdout of a shell command run by the test itself

// iproute2's ip, found where Debian puts it even when /usr/sbin is not on PATH.
inline const char* const kIp = ferry::test::kIpCommand;
using ferry::test::netns_unavailable;

// The command lines of the processes still running with `tag` in them (workers get a unique --tag).
inline std::vector<std::string> processes_with(const std::string& tag) {
  std::vector<std::string> found;
  std::istringstream out(shell_output("pgrep -af -- '" + tag + "' | grep -v pgrep"));
  for (std::string line; std::getline(out, line);) {
    if (!line.empty()) found.push_back(line);
  }
  return found;
}

inline bool process_alive(pid_t pid) {
  return ::kill(pid, 0) == 0;
}

inline std::string read_file(const std::string& path) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  return text.str();
}

// A scratch directory removed at the end of the test.
class TempDir {
 public:
  TempDir() {
    char pattern[] = "/tmp/ferry-launch-test-XXXXXX";
    if (::mkdtemp(pattern) == nullptr) FAIL("mkdtemp failed");
    path_ = pattern;
  }
  ~TempDir() { std::system(("rm -rf '" + path_ + "'").c_str()); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

class LaunchProcess {
 public:
  // Starts FERRY_BIN launch <args...>. With run_as_uid >= 0 the launcher runs as that user (test is root).
  explicit LaunchProcess(std::vector<std::string> args, int run_as_uid = -1) : args_(std::move(args)) {
    int out[2], err[2];
    REQUIRE(::pipe2(out, O_CLOEXEC) == 0);
    REQUIRE(::pipe2(err, O_CLOEXEC) == 0);
    std::vector<std::string> argv{FERRY_BIN, "launch"};
    argv.insert(argv.end(), args_.begin(), args_.end());
    std::vector<char*> c_argv;
    for (auto& arg : argv) c_argv.push_back(arg.data());
    c_argv.push_back(nullptr);
    start_ = Clock::now();
    pid_ = ::fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      ::dup2(out[1], STDOUT_FILENO);
      ::dup2(err[1], STDERR_FILENO);
      if (run_as_uid >= 0 && (::setgid(run_as_uid) != 0 || ::setuid(run_as_uid) != 0)) ::_exit(99);
      ::execv(c_argv[0], c_argv.data());
      ::_exit(98);
    }
    ::close(out[1]);
    ::close(err[1]);
    out_fd_ = out[0];
    err_fd_ = err[0];
  }

  ~LaunchProcess() {
    if (pid_ > 0 && !reaped_) {
      ::kill(pid_, SIGKILL);
      ::waitpid(pid_, nullptr, 0);
    }
    if (out_fd_ >= 0) ::close(out_fd_);
    if (err_fd_ >= 0) ::close(err_fd_);
  }

  pid_t pid() const { return pid_; }
  const std::string& out() const { return result_.out; }

  // Reads output until stdout holds `count` occurrences of `needle`; false when `limit` passes first.
  bool wait_for_output(const std::string& needle, int count, std::chrono::milliseconds limit) {
    auto deadline = Clock::now() + limit;
    while (occurrences(result_.out, needle) < count) {
      if (Clock::now() >= deadline || !read_some(deadline)) return occurrences(result_.out, needle) >= count;
    }
    return true;
  }

  // Reads until both streams close and the launcher exits; kills it and fails the test after `limit`.
  LaunchResult finish(std::chrono::milliseconds limit = 60s) {
    auto deadline = Clock::now() + limit;
    while (out_fd_ >= 0 || err_fd_ >= 0) {
      if (Clock::now() >= deadline) break;
      read_some(deadline);
    }
    int status = 0;
    while (true) {
      pid_t got = ::waitpid(pid_, &status, WNOHANG);
      if (got == pid_) break;
      if (Clock::now() >= deadline) {
        ::kill(pid_, SIGKILL);
        ::waitpid(pid_, &status, 0);
        reaped_ = true;
        FAIL("ferry launch " << joined(args_) << " did not finish in time; stdout:\n"
                             << result_.out << "\nstderr:\n"
                             << result_.err);
      }
      std::this_thread::sleep_for(5ms);
    }
    reaped_ = true;
    result_.seconds = std::chrono::duration<double>(Clock::now() - start_).count();
    result_.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    result_.args = args_;
    return result_;
  }

 private:
  static int occurrences(const std::string& text, const std::string& needle) {
    int count = 0;
    for (auto at = text.find(needle); at != std::string::npos; at = text.find(needle, at + needle.size()))
      ++count;
    return count;
  }

  // One poll over the open streams; false when nothing is open.
  bool read_some(Clock::time_point deadline) {
    std::vector<pollfd> fds;
    if (out_fd_ >= 0) fds.push_back({out_fd_, POLLIN, 0});
    if (err_fd_ >= 0) fds.push_back({err_fd_, POLLIN, 0});
    if (fds.empty()) return false;
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    int ready = ::poll(fds.data(), fds.size(),
                       static_cast<int>(std::max<long long>(0, std::min<long long>(left, 200))));
    if (ready <= 0) return true;
    for (auto& pfd : fds) {
      if (!(pfd.revents & (POLLIN | POLLHUP | POLLERR))) continue;
      char buffer[65536];
      ssize_t got = ::read(pfd.fd, buffer, sizeof buffer);
      bool is_out = pfd.fd == out_fd_;
      if (got > 0) {
        (is_out ? result_.out : result_.err).append(buffer, static_cast<std::size_t>(got));
      } else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
        ::close(pfd.fd);
        (is_out ? out_fd_ : err_fd_) = -1;
      }
    }
    return true;
  }

  std::vector<std::string> args_;
  pid_t pid_ = -1;
  bool reaped_ = false;
  int out_fd_ = -1;
  int err_fd_ = -1;
  Clock::time_point start_;
  LaunchResult result_;
};

// Runs `ferry launch <args...>` to completion.
inline LaunchResult launch(std::vector<std::string> args, std::chrono::milliseconds limit = 60s) {
  LaunchProcess process(std::move(args));
  return process.finish(limit);
}

}  // namespace launch_test
