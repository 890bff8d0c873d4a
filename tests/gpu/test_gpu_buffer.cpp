// The public ferry::Buffer on Device::cuda, as users call it (buffer_checks.hpp says what is checked): a
// one-rank group, a 1x2 group whose ranks are threads of this process, and a 1x2 `ferry launch` job whose two
// processes share the GPU ([launch]: scripts/gpu-check runs it with the CUDA MPS daemon where the machine
// allows, and says which way it ran). gpu_main.cpp exits 77 without a GPU.
#include <catch2/catch.hpp>
#include <cstdlib>
#include <string>
#include <vector>

#include "buffer_checks.hpp"
#include "common/seed.hpp"
#include "common/sibling_program.hpp"
#include "ferry/group.hpp"
#include "peer/launch_run.hpp"
#include "peer/rank_threads.hpp"

using namespace ferry;
using namespace ferry::test;

TEST_CASE("a CUDA Buffer of a one-rank group matches the host reference", "[gpu]") {
  const std::uint64_t seed = announce_seed("gpu buffer, one rank");
  Group group = Group::from_job(JobEnv{});
  const BufferCheckResult result = check_cuda_buffer(group, seed);
  INFO(result.failure);
  CHECK(result.failure.empty());
  CHECK(result.checks > 10);
}

TEST_CASE("CUDA Buffers of a 1x2 group in one process (ranks as threads) match the host reference", "[gpu]") {
  const std::uint64_t seed = announce_seed("gpu buffer, 1x2 threads");
  std::vector<BufferCheckResult> results(2);
  // Rank threads report through `results`; Catch2 asserts here, on the main thread.
  REQUIRE_NOTHROW(run_ranks(
      2, 2, unique_job_id("gpu-buffer"),
      [&](Group& group) { results[group.rank()] = check_cuda_buffer(group, seed); },
      std::chrono::seconds(60)));
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r << ": " << results[r].failure);
    CHECK(results[r].failure.empty());
    CHECK(results[r].checks > 10);
  }
}

TEST_CASE("CUDA Buffers of a 1x2 ferry launch job sharing one GPU match the host reference",
          "[gpu][launch]") {
  const std::uint64_t seed = announce_seed("gpu buffer, 1x2 processes");
  const std::string command =
      sibling_program(FERRY_BIN) + " launch --nodes 1 --ranks-per-node 2 --timeout 150 -- " +
      sibling_program(GPU_RANK_BIN) + " --check buffer --seed " + std::to_string(seed);
  const Outcome outcome = run(command);
  CHECK(outcome.exit_code == 0);
  CHECK_THAT(outcome.output, Catch::Contains("rank 0: verified") && Catch::Contains("rank 1: verified"));
}
