// Ownership of file descriptors for the launcher: every pipe, namespace handle and /dev/null it opens.
#pragma once

#include <unistd.h>

#include <utility>

namespace ferry::tools::launch {

class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { reset(); }
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) reset(std::exchange(other.fd_, -1));
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  explicit operator bool() const { return fd_ >= 0; }
  void reset(int fd = -1) {
    if (fd_ >= 0) ::close(fd_);
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// A pipe whose both ends are close-on-exec, so that only the ends a child dup2()s survive its exec.
struct Pipe {
  UniqueFd read;
  UniqueFd write;
  static Pipe make();  // throws Errc::system
};

// /dev/null opened read-only and close-on-exec: the stdin of every child the launcher starts.
UniqueFd open_dev_null();

}  // namespace ferry::tools::launch
