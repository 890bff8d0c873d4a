#include "bench/progress.hpp"

#include <unistd.h>

#include <algorithm>

namespace ferry::tools {

ProgressBar::ProgressBar(std::size_t total, bool terminal, std::FILE* bar_out, std::FILE* line_out)
    : total_(std::max<std::size_t>(total, 1)), terminal_(terminal), bar_out_(bar_out), line_out_(line_out) {}

ProgressBar::~ProgressBar() {
  finish();
}

bool ProgressBar::stderr_is_terminal() {
  return ::isatty(STDERR_FILENO) == 1;
}

void ProgressBar::step(const std::string& line) {
  ++done_;
  if (!terminal_) {
    std::fprintf(line_out_, "%s\n", line.c_str());
    std::fflush(line_out_);
    return;
  }
  constexpr std::size_t kWidth = 30;
  const std::size_t filled = std::min(kWidth, done_ * kWidth / total_);
  std::string bar(filled, '#');
  bar.resize(kWidth, '.');
  // The last point's text after the bar, cut so that the line fits an 80-column terminal.
  std::fprintf(bar_out_, "\r\033[K[%s] %zu/%zu %.40s", bar.c_str(), done_, total_, line.c_str());
  std::fflush(bar_out_);
  drawn_ = true;
}

void ProgressBar::finish() {
  if (!drawn_) return;
  std::fprintf(bar_out_, "\r\033[K");
  std::fflush(bar_out_);
  drawn_ = false;
}

}  // namespace ferry::tools
