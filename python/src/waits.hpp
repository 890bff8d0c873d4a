// Waiting from Python: the GIL is released while ferry works, and a wait looks at pending signals every
// kSignalPoll, so Ctrl-C (KeyboardInterrupt) ends it without waiting for the operation. ferry cannot cancel
// an operation already issued: after an interrupted wait the Buffer's rings are in an unknown state, and the
// Python layer abandons the Buffer (see ferry/buffer.py).
#pragma once

#include <pybind11/pybind11.h>

#include <chrono>
#include <functional>

#include "ferry/buffer.hpp"

namespace ferry::python {

inline constexpr std::chrono::milliseconds kSignalPoll{50};

// Until `event` has finished; then rethrows its error, if any. Raises KeyboardInterrupt (or whatever a signal
// handler raises) when a signal arrives meanwhile.
void wait_interruptibly(const Event& event);

// Until `ready(timeout)` (called without the GIL; waits at most `timeout`, true when done) returns true.
void wait_until(const std::function<bool(Duration)>& ready);

}  // namespace ferry::python
