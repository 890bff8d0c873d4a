// What a process holds, for soak tests: resident memory and open file descriptors, read from /proc/self.
#pragma once

#include <dirent.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

namespace ferry::test {

struct ProcessUsage {
  long rss_kib = -1;  // VmRSS
  int open_fds = -1;  // entries of /proc/self/fd, not counting the one used to list them

  std::string describe() const {
    return std::to_string(rss_kib) + " KiB resident, " + std::to_string(open_fds) + " open descriptors";
  }
};

inline ProcessUsage process_usage() {
  ProcessUsage usage;
  if (std::FILE* status = std::fopen("/proc/self/status", "r")) {
    char line[256];
    while (std::fgets(line, sizeof line, status) != nullptr) {
      if (std::strncmp(line, "VmRSS:", 6) == 0) usage.rss_kib = std::strtol(line + 6, nullptr, 10);
    }
    std::fclose(status);
  }
  if (DIR* fds = ::opendir("/proc/self/fd")) {
    int count = 0;
    while (dirent* entry = ::readdir(fds)) {
      if (entry->d_name[0] != '.') ++count;
    }
    ::closedir(fds);
    usage.open_fds = count - 1;  // the directory stream's own descriptor
  }
  return usage;
}

// Sanitizers keep freed memory in quarantine and shadow it, so their RSS says little about leaks; their
// own leak checks (LeakSanitizer) cover those builds.
inline constexpr bool kSanitized =
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    true;
#else
    false;
#endif

// FERRY_SOAK_ROUNDS when set (a long soak by hand), else `fallback`.
inline int soak_rounds(int fallback) {
  const char* text = std::getenv("FERRY_SOAK_ROUNDS");
  return text != nullptr && std::atoi(text) > 0 ? std::atoi(text) : fallback;
}

}  // namespace ferry::test
