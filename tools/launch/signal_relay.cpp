#include "launch/signal_relay.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <csignal>

#include "ferry/core/error.hpp"

namespace ferry::tools::launch {
namespace {

constexpr int kStopSignals[3] = {SIGINT, SIGTERM, SIGHUP};
constexpr int kHandledSignals[4] = {SIGINT, SIGTERM, SIGHUP, SIGCHLD};

// State the handlers touch: lock-free atomics and a file descriptor, nothing else.
std::atomic<int> g_stop_counts[3];
std::atomic<int> g_first_stop_signal{0};
std::atomic<int> g_wake_fd{-1};
std::atomic<bool> g_relay_exists{false};

struct sigaction g_previous[4];
struct sigaction g_previous_sigpipe;

void on_signal(int signal_number) {
  int saved_errno = errno;
  for (int i = 0; i < 3; ++i) {
    if (kStopSignals[i] != signal_number) continue;
    g_stop_counts[i].fetch_add(1);
    int none = 0;
    g_first_stop_signal.compare_exchange_strong(none, signal_number);
  }
  int fd = g_wake_fd.load();
  if (fd >= 0) {
    char byte = 0;
    // A full pipe already guarantees a wake-up, so a failed write loses nothing.
    [[maybe_unused]] auto ignored = ::write(fd, &byte, 1);
  }
  errno = saved_errno;
}

}  // namespace

SignalRelay::SignalRelay() {
  if (g_relay_exists.exchange(true)) fail(Errc::internal, "ferry launch: a second SignalRelay was created");
  int ends[2];
  if (::pipe2(ends, O_CLOEXEC | O_NONBLOCK) != 0) {
    g_relay_exists = false;
    fail_errno("ferry launch: pipe2 for signals", errno);
  }
  wake_read_.reset(ends[0]);
  wake_write_.reset(ends[1]);
  for (auto& count : g_stop_counts) count = 0;
  g_first_stop_signal = 0;
  g_wake_fd = wake_write_.get();

  struct sigaction action {};
  action.sa_handler = on_signal;
  sigemptyset(&action.sa_mask);
  action.sa_flags = SA_RESTART;
  for (int i = 0; i < 4; ++i) ::sigaction(kHandledSignals[i], &action, &g_previous[i]);
  struct sigaction ignore {};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  ::sigaction(SIGPIPE, &ignore, &g_previous_sigpipe);
}

SignalRelay::~SignalRelay() {
  for (int i = 0; i < 4; ++i) ::sigaction(kHandledSignals[i], &g_previous[i], nullptr);
  ::sigaction(SIGPIPE, &g_previous_sigpipe, nullptr);
  g_wake_fd = -1;
  g_relay_exists = false;
}

void SignalRelay::drain() {
  char buffer[256];
  while (::read(wake_read_.get(), buffer, sizeof buffer) > 0) {
  }
}

int SignalRelay::take_stop_signal() {
  for (int i = 0; i < 3; ++i) {
    if (g_stop_counts[i].load() > taken_[i]) {
      ++taken_[i];
      return kStopSignals[i];
    }
  }
  return 0;
}

int SignalRelay::first_stop_signal() {
  return g_first_stop_signal.load();
}

}  // namespace ferry::tools::launch
