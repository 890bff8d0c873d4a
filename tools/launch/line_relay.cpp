#include "launch/line_relay.hpp"

#include <fcntl.h>
#include <poll.h>
#include <unistd.h>

#include <cerrno>

namespace ferry::tools::launch {
namespace {

constexpr std::size_t kReadChunk = 64 * 1024;
// A line longer than this is forwarded in pieces rather than buffered without bound.
constexpr std::size_t kMaxPending = 64 * 1024;

// Writes all of `data`; false when the destination is gone (EPIPE, closed terminal) so the caller stops
// trying.
bool write_fully(int fd, const char* data, std::size_t size) {
  while (size > 0) {
    ssize_t wrote = ::write(fd, data, size);
    if (wrote < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN) {  // someone made our stdout non-blocking: wait until it drains
        pollfd pfd{fd, POLLOUT, 0};
        ::poll(&pfd, 1, 1000);
        continue;
      }
      return false;
    }
    data += wrote;
    size -= static_cast<std::size_t>(wrote);
  }
  return true;
}

}  // namespace

LineRelay::LineRelay(UniqueFd source, int destination, std::string prefix)
    : source_(std::move(source)), destination_(destination), prefix_(std::move(prefix)) {}

std::size_t LineRelay::on_readable() {
  if (!source_) return 0;
  const auto old_size = pending_.size();
  pending_.resize(old_size + kReadChunk);
  ssize_t got;
  do {
    got = ::read(source_.get(), pending_.data() + old_size, kReadChunk);
  } while (got < 0 && errno == EINTR);
  pending_.resize(old_size + (got > 0 ? static_cast<std::size_t>(got) : 0));
  if (got > 0) {
    forward_complete_lines();
    return static_cast<std::size_t>(got);
  }
  if (got < 0 && errno == EAGAIN) return 0;
  // EOF, or an error that will not go away: either way this stream is over.
  flush_partial_line();
  source_.reset();
  return 0;
}

void LineRelay::finish() {
  if (source_) {
    // Take what is already in the pipe without blocking on writers that may never close it.
    int flags = ::fcntl(source_.get(), F_GETFL);
    if (flags >= 0) ::fcntl(source_.get(), F_SETFL, flags | O_NONBLOCK);
    // Bounded: a writer that never stops must not keep the launcher here.
    for (int round = 0; round < 64 && source_ && on_readable() > 0; ++round) {
    }
  }
  flush_partial_line();
  source_.reset();
}

void LineRelay::forward_complete_lines() {
  std::string out;
  std::size_t start = 0;
  while (true) {
    auto newline = pending_.find('\n', start);
    if (newline == std::string::npos) break;
    if (!mid_line_) out += prefix_;
    out.append(pending_, start, newline + 1 - start);
    mid_line_ = false;
    start = newline + 1;
  }
  pending_.erase(0, start);
  if (pending_.size() >= kMaxPending) {
    if (!mid_line_) out += prefix_;
    out += pending_;
    pending_.clear();
    mid_line_ = true;
  }
  emit(out);
}

void LineRelay::flush_partial_line() {
  std::string out;
  if (!pending_.empty()) {
    if (!mid_line_) out += prefix_;
    out += pending_;
    pending_.clear();
    mid_line_ = true;
  }
  if (mid_line_) out += '\n';  // so the next line, maybe another rank's, starts on a line of its own
  mid_line_ = false;
  emit(out);
}

void LineRelay::emit(std::string& text) {
  if (text.empty() || !destination_ok_) return;
  destination_ok_ = write_fully(destination_, text.data(), text.size());
}

}  // namespace ferry::tools::launch
