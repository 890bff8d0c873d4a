// Copies one rank's stdout or stderr to the launcher's, line by line, each line prefixed with "[r<rank>] ".
//
// Whole lines are written with one write() each batch so that lines of different ranks never interleave
// mid-line; a line longer than the buffer is passed on in pieces; a last line without '\n' is completed at
// EOF.
#pragma once

#include <string>

#include "launch/unique_fd.hpp"

namespace ferry::tools::launch {

class LineRelay {
 public:
  // Reads `source` (owned, non-blocking is not required: it is only read after poll() says so) and writes to
  // `destination` (not owned). An empty prefix passes lines through unchanged.
  LineRelay(UniqueFd source, int destination, std::string prefix);

  // The descriptor to poll for input, or -1 once the source reached EOF or was closed.
  int fd() const { return source_.get(); }
  bool open() const { return static_cast<bool>(source_); }

  // Reads once (up to 64 KiB) and forwards the complete lines; returns how many bytes it read. At EOF (or on
  // a read error) flushes the partial line and closes the source.
  std::size_t on_readable();
  // Forwards what can be read without waiting, flushes a partial line and closes the source.
  void finish();

 private:
  void forward_complete_lines();
  void flush_partial_line();
  void emit(std::string& text);

  UniqueFd source_;
  int destination_;
  std::string prefix_;
  std::string pending_;    // bytes read but not yet forwarded: never holds a '\n'
  bool mid_line_ = false;  // the last piece forwarded ended inside a line (an over-long one)
  bool destination_ok_ = true;
};

}  // namespace ferry::tools::launch
