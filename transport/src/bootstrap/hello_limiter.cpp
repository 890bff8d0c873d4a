#include "bootstrap/hello_limiter.hpp"

#include <algorithm>

#include "ferry/core/error.hpp"

namespace ferry::transport {
namespace {

// Past this many tracked sources, expired entries are dropped before a new one is added; past the hard cap
// (many sources failing at once) new sources go uncounted, so memory stays bounded whatever arrives.
constexpr std::size_t kPruneAbove = 1024;
constexpr std::size_t kMaxSources = 65536;

}  // namespace

HelloLimiter::HelloLimiter(int max_failures, Duration window, Duration lockout)
    : max_failures_(max_failures), window_(window), lockout_(lockout) {
  if (max_failures < 1) {
    fail(Errc::invalid_argument,
         "StoreOptions::max_failed_hellos must be at least 1, not " + std::to_string(max_failures));
  }
  if (window.count() <= 0 || lockout.count() <= 0)
    fail(Errc::invalid_argument, "StoreOptions: the HELLO failure window and lockout must be positive");
}

bool HelloLimiter::record_failure(const std::string& source, Clock::time_point now) {
  if (entries_.size() >= kPruneAbove && entries_.find(source) == entries_.end()) {
    prune(now);
    if (entries_.size() >= kMaxSources) return false;
  }
  Entry& entry = entries_[source];
  if (entry.failures == 0 || now - entry.window_start > window_) {
    entry.failures = 0;
    entry.window_start = now;
  }
  if (++entry.failures < max_failures_) return false;
  entry.failures = 0;
  entry.refused_until = now + lockout_;
  return true;
}

Duration HelloLimiter::refused_for(const std::string& source, Clock::time_point now) const {
  auto it = entries_.find(source);
  if (it == entries_.end() || it->second.refused_until <= now) return Duration::zero();
  return it->second.refused_until - now;
}

void HelloLimiter::prune(Clock::time_point now) {
  for (auto it = entries_.begin(); it != entries_.end();) {
    const Entry& entry = it->second;
    bool idle = entry.refused_until <= now && (entry.failures == 0 || now - entry.window_start > window_);
    it = idle ? entries_.erase(it) : std::next(it);
  }
}

}  // namespace ferry::transport
