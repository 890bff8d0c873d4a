#include "ferry/core/file_read.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <utility>

#include "ferry/core/error.hpp"

namespace ferry {
namespace {

// Owns the descriptor of the file being read.
class ReadFd {
 public:
  explicit ReadFd(int fd) : fd_(fd) {}
  ~ReadFd() {
    if (fd_ >= 0) ::close(fd_);
  }
  ReadFd(const ReadFd&) = delete;
  ReadFd& operator=(const ReadFd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// `size`: "300 MiB, " when known (a regular file), "" when reading stopped at the limit.
[[noreturn]] void too_large(const std::string& path, std::uint64_t max_bytes, const std::string& what,
                            const std::string& size) {
  fail(Errc::invalid_argument, what + " " + path + " holds " + size + "more than the " +
                                   format_bytes(max_bytes) + " a " + what + " may have");
}

}  // namespace

std::vector<std::uint8_t> read_file_bounded(const std::string& path, std::uint64_t max_bytes,
                                            const std::string& what) {
  // O_NONBLOCK: opening a FIFO nobody writes to returns at once (and reads then see its end) instead of
  // blocking forever.
  ReadFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (fd.get() < 0) {
    const int err = errno;
    fail(Errc::invalid_argument, "cannot open " + what + " " + path + ": " + std::strerror(err));
  }
  struct stat info {};
  if (::fstat(fd.get(), &info) != 0) fail_errno("cannot read " + what + " " + path, errno);
  if (S_ISDIR(info.st_mode)) fail(Errc::invalid_argument, what + " " + path + " is a directory");
  const bool regular = S_ISREG(info.st_mode);
  if (regular && static_cast<std::uint64_t>(info.st_size) > max_bytes)
    too_large(path, max_bytes, what, format_bytes(static_cast<std::uint64_t>(info.st_size)) + ", ");
  // Back to blocking reads: a pipe's writer may be slower than this reader.
  const int flags = ::fcntl(fd.get(), F_GETFL);
  if (flags >= 0) ::fcntl(fd.get(), F_SETFL, flags & ~O_NONBLOCK);

  // Read through a chunk and appended: a regular file's bytes land in storage reserved once, and nothing is
  // zero-filled first.
  std::vector<std::uint8_t> bytes;
  if (regular) bytes.reserve(static_cast<std::size_t>(info.st_size));
  constexpr std::size_t kChunk = std::size_t{1} << 20;
  const auto chunk = std::make_unique_for_overwrite<std::uint8_t[]>(kChunk);
  while (true) {
    // At most max_bytes + 1 in all: one byte past the limit says that there is more.
    const std::uint64_t room = max_bytes + 1 - bytes.size();
    const std::size_t want = static_cast<std::size_t>(std::min<std::uint64_t>(kChunk, room));
    const ssize_t n = ::read(fd.get(), chunk.get(), want);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) fail_errno("cannot read " + what + " " + path, errno);
    if (n == 0) break;
    bytes.insert(bytes.end(), chunk.get(), chunk.get() + n);
    if (bytes.size() > max_bytes) too_large(path, max_bytes, what, "");
  }
  if (!regular) bytes.shrink_to_fit();  // a stream grew the vector by doubling
  return bytes;
}

std::string format_bytes(std::uint64_t bytes) {
  static const char* const kUnits[] = {"B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"};
  if (bytes < 1024) return std::to_string(bytes) + " B";
  double value = static_cast<double>(bytes);
  int unit = 0;
  while (value >= 1024 && unit < 6) {
    value /= 1024;
    ++unit;
  }
  char text[32];
  std::snprintf(text, sizeof text,
                value >= 100  ? "%.0f %s"
                : value >= 10 ? "%.1f %s"
                              : "%.2f %s",
                value, kUnits[unit]);
  // "64.0 MiB" reads better as "64 MiB".
  std::string out = text;
  for (const char* zeros : {".00 ", ".0 "})
    if (auto at = out.find(zeros); at != std::string::npos) out.erase(at, std::strlen(zeros) - 1);
  return out;
}

}  // namespace ferry
