// Where a test finds a program it starts (ferry, a rank program): beside its own executable when a copy is
// there, else where the build put it. scripts/gpu-stage copies the GPU tests and the programs they start into
// one folder, which then runs on another machine, where the build's paths do not exist.
#pragma once

#include <unistd.h>

#include <climits>
#include <string>

namespace ferry::test {

inline std::string sibling_program(const std::string& built_path) {
  char self[PATH_MAX];
  const ssize_t length = ::readlink("/proc/self/exe", self, sizeof self - 1);
  if (length <= 0) return built_path;
  const std::string own(self, static_cast<std::size_t>(length));
  const std::string folder = own.substr(0, own.rfind('/') + 1);
  const std::string sibling = folder + built_path.substr(built_path.rfind('/') + 1);
  return ::access(sibling.c_str(), X_OK) == 0 ? sibling : built_path;
}

}  // namespace ferry::test
