// What every multi-process test worker (one rank, started by `ferry launch`) does the same way: reading
// `--name value` options, choosing one seed for the whole job, and reporting "rank R: ... ok" or
// "rank R: FAILED: ..." lines that the tests look for.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "ferry/group.hpp"

namespace worker_common {

// Reads `--name value` pairs from argv[first..]. Returns the options, or calls `usage(why)` (which must not
// return) on a missing value or a name not in `known`.
inline std::map<std::string, std::string> read_options(int argc, char** argv, int first,
                                                       const std::vector<std::string>& known,
                                                       const std::function<void(const std::string&)>& usage) {
  std::map<std::string, std::string> options;
  for (int i = first; i < argc; ++i) {
    std::string name = argv[i];
    if (i + 1 >= argc) usage("missing value after " + name);
    if (std::find(known.begin(), known.end(), name) == known.end()) usage("unknown option " + name);
    options[name] = argv[++i];
  }
  return options;
}

// --seed when given, else FERRY_TEST_SEED, else a random one.
inline std::uint64_t chosen_seed(const std::map<std::string, std::string>& options) {
  if (auto it = options.find("--seed"); it != options.end())
    return std::strtoull(it->second.c_str(), nullptr, 10);
  if (const char* env = std::getenv("FERRY_TEST_SEED")) return std::strtoull(env, nullptr, 10);
  return std::random_device{}();
}

// Every rank runs with rank 0's seed, which rank 0 prints, so one number replays the whole job.
inline std::uint64_t agree_on_seed(ferry::Group& group, const std::string& worker, const std::string& what,
                                   std::uint64_t mine) {
  std::vector<std::uint8_t> bytes(sizeof mine);
  std::memcpy(bytes.data(), &mine, sizeof mine);
  auto seeds = group.all_gather(worker + "/seed", bytes);
  std::uint64_t seed = 0;
  std::memcpy(&seed, seeds[0].data(), sizeof seed);
  if (group.rank() == 0)
    std::printf("%s %s: seed %llu\n", worker.c_str(), what.c_str(), static_cast<unsigned long long>(seed));
  return seed;
}

inline void report_ok(int rank, const std::string& what) {
  std::printf("rank %d: %s ok\n", rank, what.c_str());
  std::fflush(stdout);
}

inline int report_failure(int rank, const std::exception& e) {
  std::printf("rank %d: FAILED: %s\n", rank, e.what());
  std::fflush(stdout);
  return 1;
}

}  // namespace worker_common
