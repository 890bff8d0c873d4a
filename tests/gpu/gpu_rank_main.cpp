// One rank of a GPU test's [launch] case, started by `ferry launch`: runs one collective check on the job's
// group and prints "rank <r>: verified (<n> checks)", or "rank <r>: FAILED: <why>" and exits 1.
//
//   ferry_gpu_rank --check buffer --seed N         check_cuda_buffer (test_gpu_buffer)
//   ferry_gpu_rank --check low-latency --seed N    check_low_latency_buffer (test_gpu_low_latency_buffer)
// (the same N on every rank).
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <string>

#include "buffer_checks.hpp"
#include "ferry/group.hpp"
#include "low_latency_buffer_checks.hpp"

int main(int argc, char** argv) {
  const std::string usage = "usage: ferry_gpu_rank --check buffer|low-latency --seed N\n";
  if (argc != 5 || std::string(argv[1]) != "--check" || std::string(argv[3]) != "--seed") {
    std::fputs(usage.c_str(), stderr);
    return 2;
  }
  const std::string check = argv[2];
  if (check != "buffer" && check != "low-latency") {
    std::fprintf(stderr, "--check %s: not a check (buffer or low-latency)\n%s", check.c_str(), usage.c_str());
    return 2;
  }
  const std::uint64_t seed = std::strtoull(argv[4], nullptr, 10);
  int rank = -1;
  try {
    ferry::Group group = ferry::Group::from_env();
    rank = group.rank();
    const ferry::test::GpuCheckResult verdict = check == "buffer"
                                                    ? ferry::test::check_cuda_buffer(group, seed)
                                                    : ferry::test::check_low_latency_buffer(group, seed);
    if (!verdict.failure.empty()) {
      std::printf("rank %d: FAILED: %s\n", rank, verdict.failure.c_str());
      return 1;
    }
    std::printf("rank %d: verified (%d checks)\n", rank, verdict.checks);
    return 0;
  } catch (const std::exception& error) {
    std::printf("rank %d: FAILED: %s\n", rank, error.what());
    return 1;
  }
}
