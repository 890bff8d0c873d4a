// The store server's lines about connections it dropped before they authenticated, summarised: a stranger
// who opens thousands of connections must not write thousands of lines (a 4200-connection burst once wrote
// 4095). The first few drops of every interval are logged as they happen; the rest are counted per reason
// and written as one line when the interval is over.
#pragma once

#include <cstddef>
#include <functional>
#include <map>
#include <string>

#include "ferry/core/deadline.hpp"

namespace ferry::transport {

class DropLog {
 public:
  using Sink = std::function<void(const std::string& line)>;
  DropLog(Sink sink, std::size_t lines_per_interval, Duration interval);

  // One dropped connection: `line` is written now while this interval's allowance lasts, otherwise only
  // counted under `reason` (a short, fixed text).
  void dropped(const std::string& reason, const std::string& line, Clock::time_point now);
  // Writes the summary of an interval that is over ("... 812 more connections dropped in the last 10 s: 800
  // no HELLO in time, 12 ..."), and starts a new one. `force`: write what is counted now (the server stops).
  void flush(Clock::time_point now, bool force = false);
  // When flush() has something to write; Clock::time_point::max() when nothing is counted.
  Clock::time_point next_flush() const;

  std::size_t suppressed() const { return suppressed_; }

 private:
  Sink sink_;
  std::size_t lines_per_interval_;
  Duration interval_;
  Clock::time_point interval_start_{};
  std::size_t logged_in_interval_ = 0;
  std::size_t suppressed_ = 0;
  std::map<std::string, std::size_t> by_reason_;
};

}  // namespace ferry::transport
