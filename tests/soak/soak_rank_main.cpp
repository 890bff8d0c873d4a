// One rank of the multi-process soak (test_soak_launch.cpp starts it under `ferry launch`):
//
//   ferry_soak_rank [--seed N] [--rounds R] [--warmup W] [--max-rss-growth-kib K]
//
// Builds a Buffer on the job's Group, runs W warm-up rounds, then R random small dispatch + combine rounds
// (every result checked exactly, tests/runtime/group_split_exercise.hpp), and compares the process's resident
// memory and open descriptors (and, on rank 0, what the bootstrap store holds) before and after the R
// rounds. Prints "rank <r>: soak ..." and exits 1 on a wrong result or a leak.
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "../runtime/group_split_exercise.hpp"
#include "ferry/buffer.hpp"
#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/store.hpp"
#include "process_usage.hpp"

using namespace ferry;

namespace {

struct Options {
  std::uint64_t seed = 1;
  int rounds = 200;
  int warmup = 20;
  long max_rss_growth_kib = 8192;
};

int run(const Options& options) {
  Group group = Group::from_env();
  Buffer buffer(group, test::split_test_config(group));
  std::string diff = test::run_rounds(buffer, group, options.seed, options.warmup);
  if (!diff.empty()) fail(Errc::internal, "warm-up: " + diff);
  group.barrier("soak/warm");
  const test::ProcessUsage before = test::process_usage();
  const transport::StoreStats store_before = group.store().server_stats();

  diff = test::run_rounds(buffer, group, options.seed + 1, options.rounds);
  if (!diff.empty()) fail(Errc::internal, diff);
  const test::ProcessUsage after = test::process_usage();
  group.barrier("soak/done");
  const transport::StoreStats store_after = group.store().server_stats();

  std::string store;
  if (group.rank() == 0) {
    store = "; store " + std::to_string(store_before.keys) + " keys / " + std::to_string(store_before.bytes) +
            " bytes before, " + std::to_string(store_after.keys) + " / " + std::to_string(store_after.bytes) +
            " after";
  }
  std::printf("rank %d: soak %d rounds: before %s; after %s%s\n", group.rank(), options.rounds,
              before.describe().c_str(), after.describe().c_str(), store.c_str());
  std::fflush(stdout);
  if (after.open_fds != before.open_fds) fail(Errc::internal, "open descriptors changed during the soak");
  if (!test::kSanitized && after.rss_kib - before.rss_kib > options.max_rss_growth_kib)
    fail(Errc::internal,
         "resident memory grew by " + std::to_string(after.rss_kib - before.rss_kib) + " KiB");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Options options;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--seed") == 0) options.seed = std::strtoull(argv[i + 1], nullptr, 10);
    if (std::strcmp(argv[i], "--rounds") == 0) options.rounds = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--warmup") == 0) options.warmup = std::atoi(argv[i + 1]);
    if (std::strcmp(argv[i], "--max-rss-growth-kib") == 0)
      options.max_rss_growth_kib = std::atol(argv[i + 1]);
  }
  try {
    return run(options);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
}
