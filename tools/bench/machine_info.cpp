#include "bench/machine_info.hpp"

#include <sys/utsname.h>

#include <ctime>
#include <fstream>
#include <thread>

namespace ferry::tools {

namespace {

std::string cpu_model() {
  std::ifstream in("/proc/cpuinfo");
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("model name", 0) == 0) {
      auto colon = line.find(':');
      if (colon != std::string::npos) return line.substr(line.find_first_not_of(' ', colon + 1));
    }
  }
  return "unknown";
}

}  // namespace

nlohmann::json machine_info() {
  utsname names{};
  uname(&names);
  return {{"hostname", names.nodename},
          {"nproc", std::thread::hardware_concurrency()},
          {"cpu", cpu_model()},
          {"kernel", std::string(names.sysname) + " " + names.release}};
}

std::string now_iso8601() {
  std::time_t now = std::time(nullptr);
  char text[64];
  std::strftime(text, sizeof text, "%Y-%m-%dT%H:%M:%SZ", std::gmtime(&now));
  return text;
}

}  // namespace ferry::tools
