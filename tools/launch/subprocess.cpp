#include "launch/subprocess.hpp"

#include <dirent.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <sstream>

#include "ferry/core/error.hpp"
#include "launch/unique_fd.hpp"

namespace ferry::tools::launch {
namespace {

std::vector<char*> c_argv(const std::vector<std::string>& argv) {
  std::vector<char*> out;
  out.reserve(argv.size() + 1);
  for (const auto& arg : argv) out.push_back(const_cast<char*>(arg.c_str()));
  out.push_back(nullptr);
  return out;
}

// Reads `fd` until EOF or `deadline`, appending to `out`. Returns false when the deadline came first.
bool read_until_eof(int fd, const Deadline& deadline, std::string& out) {
  char buffer[4096];
  while (true) {
    pollfd pfd{fd, POLLIN, 0};
    int ready = ::poll(&pfd, 1, deadline.remaining_ms());
    if (ready < 0) {
      if (errno == EINTR) continue;
      fail_errno("ferry launch: poll", errno);
    }
    if (ready == 0) return false;
    ssize_t got = ::read(fd, buffer, sizeof buffer);
    if (got < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      fail_errno("ferry launch: read", errno);
    }
    if (got == 0) return true;
    out.append(buffer, static_cast<std::size_t>(got));
  }
}

std::string trimmed(std::string text) {
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text;
}

}  // namespace

void reset_signals_in_child() noexcept {
  struct sigaction defaults {};
  defaults.sa_handler = SIG_DFL;
  sigemptyset(&defaults.sa_mask);
  for (int signal_number : {SIGINT, SIGTERM, SIGHUP, SIGCHLD, SIGPIPE, SIGQUIT}) {
    ::sigaction(signal_number, &defaults, nullptr);
  }
  sigset_t none;
  sigemptyset(&none);
  ::sigprocmask(SIG_SETMASK, &none, nullptr);
}

void write_all_noexcept(int fd, const char* text) noexcept {
  std::size_t left = std::strlen(text);
  while (left > 0) {
    ssize_t wrote = ::write(fd, text, left);
    if (wrote < 0) {
      if (errno == EINTR) continue;
      return;
    }
    text += wrote;
    left -= static_cast<std::size_t>(wrote);
  }
}

std::string signal_name(int signal_number) {
  if (const char* abbrev = ::sigabbrev_np(signal_number)) return std::string("SIG") + abbrev;
  return "signal " + std::to_string(signal_number);
}

std::string describe_wait_status(int wait_status) {
  if (WIFEXITED(wait_status)) return "status " + std::to_string(WEXITSTATUS(wait_status));
  if (WIFSIGNALED(wait_status)) return "signal " + signal_name(WTERMSIG(wait_status));
  return "wait status " + std::to_string(wait_status);
}

int exit_code_of(int wait_status) {
  if (WIFEXITED(wait_status)) return WEXITSTATUS(wait_status);
  if (WIFSIGNALED(wait_status)) return 128 + WTERMSIG(wait_status);
  return 255;
}

std::optional<int> wait_until(pid_t pid, const Deadline& deadline) {
  Backoff backoff;
  while (true) {
    int status = 0;
    pid_t got = ::waitpid(pid, &status, WNOHANG);
    if (got == pid) return status;
    if (got < 0 && errno != EINTR) fail_errno("ferry launch: waitpid(" + std::to_string(pid) + ")", errno);
    if (deadline.expired()) return std::nullopt;
    backoff.pause();
  }
}

void kill_and_reap(pid_t pid, Duration limit) noexcept {
  ::kill(pid, SIGKILL);
  try {
    if (!wait_until(pid, Deadline(limit))) {
      std::fprintf(stderr, "ferry launch: warning: process %d did not end after SIGKILL\n",
                   static_cast<int>(pid));
    }
  } catch (const std::exception&) {
    // Already reaped by someone else: nothing is left to do.
  }
}

bool CommandResult::succeeded() const {
  return WIFEXITED(wait_status) && WEXITSTATUS(wait_status) == 0;
}

CommandResult run_command(const std::vector<std::string>& argv, Duration timeout) {
  if (argv.empty()) fail(Errc::invalid_argument, "ferry launch: run_command needs a command");
  auto args = c_argv(argv);
  auto output = Pipe::make();
  auto dev_null = open_dev_null();
  pid_t pid = ::fork();
  if (pid < 0) fail_errno("ferry launch: fork for '" + join_command(argv) + "'", errno);
  if (pid == 0) {
    reset_signals_in_child();
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::dup2(dev_null.get(), STDIN_FILENO);
    ::dup2(output.write.get(), STDOUT_FILENO);
    ::dup2(output.write.get(), STDERR_FILENO);
    ::execvp(args[0], args.data());
    write_all_noexcept(STDERR_FILENO, "cannot execute: ");
    write_all_noexcept(STDERR_FILENO, std::strerror(errno));
    ::_exit(127);
  }
  output.write.reset();
  Deadline deadline(timeout);
  CommandResult result;
  bool finished = false;
  try {
    finished = read_until_eof(output.read.get(), deadline, result.output);
  } catch (...) {
    kill_and_reap(pid, std::chrono::seconds(5));
    throw;
  }
  std::optional<int> status;
  if (finished) status = wait_until(pid, deadline);
  if (!status) {
    kill_and_reap(pid, std::chrono::seconds(5));
    fail(Errc::timeout,
         "ferry launch: '" + join_command(argv) + "' did not finish within " +
             std::to_string(std::chrono::duration_cast<std::chrono::seconds>(timeout).count()) + " s");
  }
  result.wait_status = *status;
  return result;
}

void run_checked(const std::vector<std::string>& argv, Duration timeout) {
  auto result = run_command(argv, timeout);
  if (result.succeeded()) return;
  std::string message =
      "ferry launch: '" + join_command(argv) + "' failed with " + describe_wait_status(result.wait_status);
  auto output = trimmed(result.output);
  if (!output.empty()) message += ": " + output;
  fail(Errc::system, message);
}

std::string join_command(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& arg : argv) {
    if (!out.empty()) out += ' ';
    out += arg;
  }
  return out;
}

void run_in_child(const std::string& what, Duration timeout, const std::function<void()>& body) {
  auto errors = Pipe::make();
  pid_t pid = ::fork();
  if (pid < 0) fail_errno(what + ": fork", errno);
  if (pid == 0) {
    reset_signals_in_child();
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    int code = 0;
    try {
      body();
    } catch (const std::exception& e) {
      write_all_noexcept(errors.write.get(), e.what());
      code = 1;
    } catch (...) {
      write_all_noexcept(errors.write.get(), "unknown exception");
      code = 1;
    }
    ::_exit(code);  // not exit(): the parent's atexit handlers and stdio buffers are not ours to run
  }
  errors.write.reset();
  Deadline deadline(timeout);
  std::string message;
  bool finished = false;
  try {
    finished = read_until_eof(errors.read.get(), deadline, message);
  } catch (...) {
    kill_and_reap(pid, std::chrono::seconds(5));
    throw;
  }
  std::optional<int> status;
  if (finished) status = wait_until(pid, deadline);
  if (!status) {
    kill_and_reap(pid, std::chrono::seconds(5));
    fail(Errc::timeout,
         what + ": did not finish within " +
             std::to_string(std::chrono::duration_cast<std::chrono::seconds>(timeout).count()) + " s");
  }
  if (WIFEXITED(*status) && WEXITSTATUS(*status) == 0) return;
  fail(Errc::system,
       what + ": " + (message.empty() ? "child ended with " + describe_wait_status(*status) : message));
}

namespace {

// /proc/<pid>/stat of a process that may exit while we read it: the read then fails with ESRCH, which an
// ifstream turns into an exception (libstdc++'s basic_filebuf::underflow). A vanished process is simply not
// a child any more, so this read reports it as empty instead.
std::string read_proc_stat(const char* pid_text) {
  std::string path = std::string("/proc/") + pid_text + "/stat";
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd) return {};
  std::string text;
  char buffer[512];
  while (true) {
    ssize_t got = ::read(fd.get(), buffer, sizeof buffer);
    if (got < 0 && errno == EINTR) continue;
    if (got < 0) return {};
    if (got == 0) return text;
    text.append(buffer, static_cast<std::size_t>(got));
  }
}

}  // namespace

std::vector<pid_t> list_children() {
  std::vector<pid_t> children;
  const pid_t self = ::getpid();
  std::unique_ptr<DIR, int (*)(DIR*)> proc(::opendir("/proc"), ::closedir);
  if (!proc) return children;
  while (dirent* entry = ::readdir(proc.get())) {
    char* end = nullptr;
    long pid = std::strtol(entry->d_name, &end, 10);
    if (end == entry->d_name || *end != '\0' || pid <= 0) continue;
    std::string stat = read_proc_stat(entry->d_name);
    // "pid (comm) state ppid ...": comm may contain spaces and parentheses, so parse after the last ')'.
    auto close_paren = stat.rfind(')');
    if (close_paren == std::string::npos) continue;
    std::istringstream rest(stat.substr(close_paren + 1));
    std::string state;
    long parent = 0;
    if (rest >> state >> parent && parent == self) children.push_back(static_cast<pid_t>(pid));
  }
  return children;
}

int reap_all_children(Duration limit) noexcept {
  int reaped = 0;
  try {
    Deadline deadline(limit);
    Backoff backoff;
    while (true) {
      auto children = list_children();
      if (children.empty()) return reaped;
      for (pid_t child : children) {
        ::kill(child, SIGKILL);
        int status = 0;
        if (::waitpid(child, &status, WNOHANG) == child) {
          ++reaped;
          backoff.reset();
        }
      }
      if (deadline.expired()) {
        std::fprintf(stderr,
                     "ferry launch: warning: %zu process(es) did not end after SIGKILL (first: pid %d)\n",
                     children.size(), static_cast<int>(children.front()));
        return reaped;
      }
      backoff.pause();
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry launch: warning: while reaping leftover processes: %s\n", e.what());
  }
  return reaped;
}

std::optional<std::string> find_executable(const std::string& name) {
  auto is_executable = [](const std::string& path) {
    struct stat info {};
    return ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode) && ::access(path.c_str(), X_OK) == 0;
  };
  if (name.find('/') != std::string::npos) {
    if (is_executable(name)) return name;
    return std::nullopt;
  }
  const char* path = std::getenv("PATH");
  std::string dirs = path != nullptr ? path : "/usr/local/bin:/usr/bin:/bin";
  dirs += ":/usr/local/sbin:/usr/sbin:/sbin";
  std::size_t start = 0;
  while (start <= dirs.size()) {
    auto end = dirs.find(':', start);
    if (end == std::string::npos) end = dirs.size();
    auto dir = dirs.substr(start, end - start);
    if (!dir.empty() && is_executable(dir + "/" + name)) return dir + "/" + name;
    start = end + 1;
  }
  return std::nullopt;
}

}  // namespace ferry::tools::launch
