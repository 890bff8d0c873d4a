// Signals as events a poll() loop can wait for (the self-pipe trick).
//
// The launcher must react to SIGINT/SIGTERM/SIGHUP (forward them to the ranks, tear the cluster down) and to
// SIGCHLD (a rank ended) while it sits in poll() on the ranks' output. The handlers only count the signal and
// write a byte to a non-blocking pipe whose read end is in the poll set; everything else runs on the normal
// path, outside the handlers.
#pragma once

#include "launch/unique_fd.hpp"

namespace ferry::tools::launch {

class SignalRelay {
 public:
  // Installs the handlers (SIGINT, SIGTERM, SIGHUP, SIGCHLD) and ignores SIGPIPE, so that a closed stdout
  // surfaces as EPIPE. Only one SignalRelay may exist at a time.
  SignalRelay();
  // Restores the dispositions found at construction.
  ~SignalRelay();
  SignalRelay(const SignalRelay&) = delete;
  SignalRelay& operator=(const SignalRelay&) = delete;

  // Readable after any of the handled signals arrived; drain() empties it.
  int wake_fd() const { return wake_read_.get(); }
  void drain();

  // The next stop signal (SIGINT, SIGTERM or SIGHUP) not yet taken, or 0 when there is none.
  int take_stop_signal();
  // The first stop signal received since construction, or 0. Async-signal-safe to read.
  static int first_stop_signal();

 private:
  UniqueFd wake_read_;
  UniqueFd wake_write_;
  int taken_[3] = {0, 0, 0};
};

}  // namespace ferry::tools::launch
