// Deadlines and polite waiting.
//
// Every wait in ferry has a deadline, and no wait spins without bound: CI machines run 4-16 ranks plus proxy
// threads on 2 cores, so a waiter spins briefly, then yields, then sleeps with a growing pause (at most
// 1 ms).
#pragma once

#include <chrono>
#include <cstdint>
#include <thread>

namespace ferry {

using Clock = std::chrono::steady_clock;
using Duration = std::chrono::nanoseconds;

// Seconds from `start` to now, for timings and reports.
inline double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// Default for every wait unless the caller's Config says otherwise (DESIGN.md: 100 s).
inline constexpr std::chrono::seconds kDefaultTimeout{100};

class Deadline {
 public:
  explicit Deadline(Duration budget) : end_(Clock::now() + budget) {}
  static Deadline after(Duration budget) { return Deadline(budget); }

  bool expired() const { return Clock::now() >= end_; }
  Duration remaining() const {
    auto left = end_ - Clock::now();
    return left > Duration::zero() ? std::chrono::duration_cast<Duration>(left) : Duration::zero();
  }
  // Remaining time in whole milliseconds, rounded up, for poll(2) and friends.
  int remaining_ms() const {
    auto ns = remaining().count();
    auto ms = (ns + 999'999) / 1'000'000;
    return ms > 0x7fffffff ? 0x7fffffff : static_cast<int>(ms);
  }

 private:
  Clock::time_point end_;
};

// A deadline that restarts whenever a watched value changes: "no progress for `patience`". The caller reads
// the value (a heartbeat, a counter) as often as it likes and asks expired(value); the first reading starts
// the watch.
class ProgressDeadline {
 public:
  explicit ProgressDeadline(Duration patience, Clock::time_point now = Clock::now())
      : patience_(patience), changed_(now) {}

  bool expired(std::uint64_t value, Clock::time_point now = Clock::now()) {
    if (!seen_ || value != value_) {
      seen_ = true;
      value_ = value;
      changed_ = now;
    }
    return now - changed_ >= patience_;
  }
  Duration patience() const { return patience_; }

 private:
  Duration patience_;
  Clock::time_point changed_;
  std::uint64_t value_ = 0;
  bool seen_ = false;
};

// Spin, then yield, then sleep with exponential growth. Call pause() once per unsuccessful poll and reset()
// whenever progress is made.
class Backoff {
 public:
  void pause() {
    if (rounds_ < kSpinRounds) {
      ++rounds_;
      return;
    }
    if (rounds_ < kSpinRounds + kYieldRounds) {
      ++rounds_;
      std::this_thread::yield();
      return;
    }
    std::this_thread::sleep_for(sleep_);
    if (sleep_ < kMaxSleep) sleep_ *= 2;
  }
  void reset() {
    rounds_ = 0;
    sleep_ = kMinSleep;
  }

 private:
  static constexpr std::uint32_t kSpinRounds = 64;
  static constexpr std::uint32_t kYieldRounds = 64;
  static constexpr std::chrono::microseconds kMinSleep{2};
  static constexpr std::chrono::microseconds kMaxSleep{1000};
  std::uint32_t rounds_ = 0;
  std::chrono::microseconds sleep_ = kMinSleep;
};

}  // namespace ferry
