// Failed authentications per connection source, for the store server: a source (an IP address, without the
// port, so reconnecting does not reset it) that fails HELLO max_failures times within `window` is refused
// for `lockout`. The job secret is 128 random bits, so this does not protect the secret; it keeps a flood of
// bad HELLOs from costing the server more than one accept and one short reply per connection, and makes the
// refusal explicit instead of a hang.
#pragma once

#include <cstddef>
#include <string>
#include <unordered_map>

#include "ferry/core/deadline.hpp"

namespace ferry::transport {

class HelloLimiter {
 public:
  HelloLimiter(int max_failures, Duration window, Duration lockout);

  // Counts one failed HELLO from `source`; true when it has now reached the limit and is refused.
  bool record_failure(const std::string& source, Clock::time_point now);
  // How much longer connections from `source` are refused (zero when they are accepted).
  Duration refused_for(const std::string& source, Clock::time_point now) const;

  int max_failures() const { return max_failures_; }
  Duration window() const { return window_; }
  std::size_t tracked_sources() const { return entries_.size(); }

 private:
  struct Entry {
    int failures = 0;
    Clock::time_point window_start{};
    Clock::time_point refused_until{};
  };
  // Forgets sources whose window and lockout are over, so memory stays bounded however many sources fail.
  void prune(Clock::time_point now);

  int max_failures_;
  Duration window_;
  Duration lockout_;
  std::unordered_map<std::string, Entry> entries_;
};

}  // namespace ferry::transport
