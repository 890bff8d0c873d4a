// Reading a whole file someone named (a trace, a training corpus, a checkpoint) with a bound on its size: a
// device such as /dev/zero, a FIFO that never ends or a file far larger than its kind ever is gets refused by
// name, instead of being read until memory runs out.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ferry {

// The bytes of `path`; `what` names its role in messages ("data file", "trace file"). Throws
// Errc::invalid_argument naming the file when it cannot be opened, is a directory, or holds more than
// `max_bytes` (a regular file's size is checked before reading; anything else is read up to max_bytes + 1);
// Errc::system when a read fails.
std::vector<std::uint8_t> read_file_bounded(const std::string& path, std::uint64_t max_bytes,
                                            const std::string& what);

// "512 B", "64 KiB", "1.5 GiB": a byte count for a message, in binary units, to 3 significant digits.
std::string format_bytes(std::uint64_t bytes);

}  // namespace ferry
