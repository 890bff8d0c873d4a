// Running `ferry launch` from a test: exit code and output, echoed into the test log.
#pragma once

#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <string>

namespace ferry::test {

struct Outcome {
  int exit_code = -1;
  std::string output;
};

// Runs a shell command, returning its exit code and its stdout+stderr (echoed for the test log).
inline Outcome run(const std::string& command) {
  Outcome outcome;
  FILE* pipe = popen((command + " 2>&1").c_str(), "r");
  REQUIRE(pipe != nullptr);
  std::array<char, 4096> buffer{};
  while (std::fgets(buffer.data(), buffer.size(), pipe) != nullptr) outcome.output += buffer.data();
  int status = pclose(pipe);
  outcome.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
  std::cout << "$ " << command << "\n" << outcome.output << "(exit " << outcome.exit_code << ")\n";
  return outcome;
}

inline std::string temp_path(const std::string& stem) {
  return std::string(FERRY_BINARY_DIR) + "/" + stem + "-" + std::to_string(getpid()) + ".txt";
}

inline std::string read_job_id(const std::string& path) {
  std::ifstream in(path);
  std::string job_id;
  in >> job_id;
  return job_id;
}

}  // namespace ferry::test
