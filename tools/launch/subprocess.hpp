// Child processes for the launcher: running a helper command (ip, tc) to completion, running a function in a
// forked child, describing how a child ended, and making sure none is left behind.
//
// The launcher is single-threaded, so code between fork() and exec() may allocate; the functions marked
// async-signal-safe are the ones a rank's child calls, and they stay safe anyway.
#pragma once

#include <chrono>

#include <sys/types.h>

#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "ferry/core/deadline.hpp"

namespace ferry::tools::launch {

// Restores default dispositions for the signals the launcher handles or ignores and unblocks every signal:
// handlers are reset by exec anyway, but SIG_IGN and the signal mask would be inherited. Async-signal-safe.
void reset_signals_in_child() noexcept;

// Writes `text` to `fd`, retrying on EINTR and partial writes. Async-signal-safe.
void write_all_noexcept(int fd, const char* text) noexcept;

// "SIGTERM" for SIGTERM; "signal 42" for a number without a name.
std::string signal_name(int signal_number);

// How a child ended, for messages: "status 3" or "signal SIGKILL".
std::string describe_wait_status(int wait_status);

// The exit code a shell would report for it: the exit status, or 128 + the signal number.
int exit_code_of(int wait_status);

// Waits for child `pid` to end until `deadline` (polling with Backoff); its wait status, or nullopt when the
// deadline passed first. Throws Errc::system when `pid` is not a child of this process.
std::optional<int> wait_until(pid_t pid, const Deadline& deadline);

// SIGKILLs child `pid` and reaps it (waiting at most `limit`; a process stuck in the kernel is reported).
void kill_and_reap(pid_t pid, Duration limit) noexcept;

struct CommandResult {
  int wait_status = 0;
  std::string output;  // stdout and stderr together
  bool succeeded() const;
};

// How long an administrative command (ip, nft) may take before it counts as hung.
inline constexpr std::chrono::seconds kAdminCommandTimeout{30};

// Runs `argv` (argv[0] searched in PATH, no shell) with stdin from /dev/null, collecting its output. Throws
// Errc::timeout when it does not finish within `timeout` (it is killed and reaped first), Errc::system when
// it cannot be started.
CommandResult run_command(const std::vector<std::string>& argv, Duration timeout);

// run_command, then throws Errc::system naming the command, how it ended and what it printed when it failed.
void run_checked(const std::vector<std::string>& argv, Duration timeout);

// "ip netns add x": the command as a user would type it, for messages.
std::string join_command(const std::vector<std::string>& argv);

// Runs `body` in a forked child and waits for it (at most `timeout`). A std::exception escaping `body`
// becomes an Errc::system error here whose message starts with `what` and carries the exception's message.
void run_in_child(const std::string& what, Duration timeout, const std::function<void()>& body);

// The pids of this process's children (from /proc), zombies included.
std::vector<pid_t> list_children();

// SIGKILLs and reaps every remaining child of this process, waiting at most `limit`. With the launcher a
// child subreaper (PR_SET_CHILD_SUBREAPER), this includes orphaned grandchildren of the ranks. Returns how
// many it reaped.
int reap_all_children(Duration limit) noexcept;

// The full path of executable `name` found in PATH (and, since root's PATH sometimes lacks them, the sbin
// directories where iproute2 lives), or nullopt.
std::optional<std::string> find_executable(const std::string& name);

}  // namespace ferry::tools::launch
