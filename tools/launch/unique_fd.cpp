#include "launch/unique_fd.hpp"

#include <fcntl.h>

#include <cerrno>

#include "ferry/core/error.hpp"

namespace ferry::tools::launch {

Pipe Pipe::make() {
  int ends[2];
  if (::pipe2(ends, O_CLOEXEC) != 0) fail_errno("ferry launch: pipe2", errno);
  return Pipe{UniqueFd(ends[0]), UniqueFd(ends[1])};
}

UniqueFd open_dev_null() {
  int fd = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail_errno("ferry launch: open /dev/null", errno);
  return UniqueFd(fd);
}

}  // namespace ferry::tools::launch
