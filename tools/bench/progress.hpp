// A progress bar for long runs, drawn on stderr only when stderr is a terminal (redrawn in place with \r);
// otherwise every step's line is printed on stdout as it finishes, so logs and `ferry launch` (whose ranks
// write into pipes) keep a plain record.
#pragma once

#include <cstddef>
#include <cstdio>
#include <string>

namespace ferry::tools {

class ProgressBar {
 public:
  // `terminal`: draw the bar (stderr) instead of printing lines (stdout). Output goes to `bar_out` and
  // `line_out` (stderr and stdout by default; tests pass files).
  ProgressBar(std::size_t total, bool terminal, std::FILE* bar_out = stderr, std::FILE* line_out = stdout);
  ~ProgressBar();  // finish()
  ProgressBar(const ProgressBar&) = delete;
  ProgressBar& operator=(const ProgressBar&) = delete;

  // One step done; `line` says what it was.
  void step(const std::string& line);
  // Clears the bar (terminal) so that what follows starts on a clean line. Idempotent.
  void finish();

  static bool stderr_is_terminal();

 private:
  std::size_t total_, done_ = 0;
  bool terminal_;
  bool drawn_ = false;
  std::FILE* bar_out_;
  std::FILE* line_out_;
};

}  // namespace ferry::tools
