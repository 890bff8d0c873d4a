#include "bootstrap/drop_log.hpp"

#include <utility>

#include "bootstrap/store_protocol.hpp"

namespace ferry::transport {

DropLog::DropLog(Sink sink, std::size_t lines_per_interval, Duration interval)
    : sink_(std::move(sink)), lines_per_interval_(lines_per_interval), interval_(interval) {}

void DropLog::dropped(const std::string& reason, const std::string& line, Clock::time_point now) {
  if (now - interval_start_ >= interval_) {
    flush(now, true);
    interval_start_ = now;
    logged_in_interval_ = 0;
  }
  if (logged_in_interval_ < lines_per_interval_) {
    ++logged_in_interval_;
    sink_(line);
    return;
  }
  ++suppressed_;
  ++by_reason_[reason];
}

void DropLog::flush(Clock::time_point now, bool force) {
  if (suppressed_ == 0 || (!force && now < next_flush())) return;
  std::string reasons;
  for (const auto& [reason, count] : by_reason_) {
    reasons += (reasons.empty() ? "" : ", ") + std::to_string(count) + " " + reason;
  }
  const Duration span = now - interval_start_ < interval_ ? now - interval_start_ : interval_;
  sink_(std::to_string(suppressed_) + " more connection" + (suppressed_ == 1 ? "" : "s") +
        " from unauthenticated peers dropped within " + wire::describe_duration(span) + " (" + reasons +
        "); not logged one by one");
  suppressed_ = 0;
  by_reason_.clear();
  interval_start_ = now;
  logged_in_interval_ = 0;
}

Clock::time_point DropLog::next_flush() const {
  return suppressed_ == 0 ? Clock::time_point::max() : interval_start_ + interval_;
}

}  // namespace ferry::transport
