// Whether `ferry launch --netns` can run on this machine, and the skip for tests that need it.
#pragma once

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/skip.hpp"

namespace ferry::test {

// iproute2's ip, found where Debian puts it even when /usr/sbin is not on PATH.
inline const char* const kIpCommand = "PATH=$PATH:/usr/sbin:/sbin ip";

// stdout of a shell command run by the test itself.
inline std::string shell_output(const std::string& command) {
  std::string output;
  FILE* pipe = ::popen(command.c_str(), "r");
  if (pipe == nullptr) return output;
  char buffer[4096];
  while (std::size_t got = std::fread(buffer, 1, sizeof buffer, pipe)) output.append(buffer, got);
  ::pclose(pipe);
  return output;
}

// Why `ferry launch --netns` cannot run here ("" when it can): it needs root, iproute2, and `ip netns add`
// to work (a container without CAP_SYS_ADMIN has the first two and not the third).
// FERRY_TEST_NETNS_UNAVAILABLE=<reason> pretends the probe failed, to check that every netns test then
// reports itself skipped.
inline std::string netns_unavailable() {
  static const std::string reason = [] {
    if (const char* simulated = std::getenv("FERRY_TEST_NETNS_UNAVAILABLE"); simulated && *simulated)
      return std::string("simulated: ") + simulated;
    if (::geteuid() != 0) return std::string("not root");
    if (shell_output(std::string(kIpCommand) + " -V 2>/dev/null").empty())
      return std::string("iproute2's ip is missing");
    const std::string probe = "ferrytest-" + std::to_string(::getpid());
    auto added = shell_output(std::string(kIpCommand) + " netns add " + probe + " && echo ok");
    shell_output(std::string(kIpCommand) + " netns del " + probe + " 2>/dev/null");
    if (added.find("ok") == std::string::npos)
      return std::string("'ip netns add' fails here (no CAP_SYS_ADMIN?)");
    return std::string();
  }();
  return reason;
}

}  // namespace ferry::test

// Ends a test case as skipped (ctest exit code 77), saying why, where --netns cannot run.
#define SKIP_WITHOUT_NETNS()                                                         \
  do {                                                                               \
    if (auto netns_reason = ferry::test::netns_unavailable(); !netns_reason.empty()) \
      ferry::test::skip("ferry launch --netns cannot run here: " + netns_reason);    \
  } while (false)
