// One rank of test_gpu_buffer's [launch] case, started by `ferry launch`: runs check_cuda_buffer on a CUDA
// Buffer of the job's group and prints "rank <r>: verified (<n> checks)", or "rank <r>: FAILED: <why>" and
// exits 1.
//
//   ferry_gpu_buffer_rank --seed N        (the same N on every rank)
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>

#include "buffer_checks.hpp"
#include "ferry/group.hpp"

int main(int argc, char** argv) {
  if (argc != 3 || std::strcmp(argv[1], "--seed") != 0) {
    std::fprintf(stderr, "usage: ferry_gpu_buffer_rank --seed N\n");
    return 2;
  }
  const std::uint64_t seed = std::strtoull(argv[2], nullptr, 10);
  int rank = -1;
  try {
    ferry::Group group = ferry::Group::from_env();
    rank = group.rank();
    const ferry::test::BufferCheckResult result = ferry::test::check_cuda_buffer(group, seed);
    if (!result.failure.empty()) {
      std::printf("rank %d: FAILED: %s\n", rank, result.failure.c_str());
      return 1;
    }
    std::printf("rank %d: verified (%d checks)\n", rank, result.checks);
    return 0;
  } catch (const std::exception& error) {
    std::printf("rank %d: FAILED: %s\n", rank, error.what());
    return 1;
  }
}
