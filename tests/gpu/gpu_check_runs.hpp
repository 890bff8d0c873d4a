// The three ways test_gpu_buffer and test_gpu_low_latency_buffer run a collective check of the public API on
// device tensors (check_cuda_buffer, check_low_latency_buffer): on a one-rank group, on a 1x2 group whose
// ranks are threads of this process sharing the GPU, and in a 1x2 `ferry launch` job whose two processes
// share it ([launch]: ferry_gpu_rank --check NAME; scripts/gpu-check runs it under the CUDA MPS daemon where
// the machine allows, and says which way it ran). The checks report through GpuCheckResult (check_result.hpp)
// and never throw for a difference; Catch2 asserts here, on the test's main thread. The including test
// defines FERRY_BIN and GPU_RANK_BIN (tests/gpu/CMakeLists.txt).
#pragma once

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include "check_result.hpp"
#include "common/sibling_program.hpp"
#include "ferry/group.hpp"
#include "peer/launch_run.hpp"
#include "peer/rank_threads.hpp"

namespace ferry::test {

using GpuCheck = GpuCheckResult (*)(Group& group, std::uint64_t seed);

inline void expect_passed(const GpuCheckResult& result, int min_checks, const std::string& who) {
  INFO(who << ": " << result.failure);
  CHECK(result.failure.empty());
  CHECK(result.checks > min_checks);
}

inline void check_on_one_rank(GpuCheck check, std::uint64_t seed, int min_checks) {
  Group group = Group::from_job(JobEnv{});
  expect_passed(check(group, seed), min_checks, "rank 0");
}

inline void check_on_rank_threads(GpuCheck check, std::uint64_t seed, int min_checks,
                                  const std::string& job) {
  std::vector<GpuCheckResult> results(2);
  REQUIRE_NOTHROW(run_ranks(
      2, 2, unique_job_id(job), [&](Group& group) { results[group.rank()] = check(group, seed); },
      std::chrono::seconds(60)));
  for (int r = 0; r < 2; ++r) expect_passed(results[r], min_checks, "rank " + std::to_string(r));
}

// name: ferry_gpu_rank's --check.
inline void check_on_launched_ranks(const std::string& name, std::uint64_t seed) {
  const std::string command =
      sibling_program(FERRY_BIN) + " launch --nodes 1 --ranks-per-node 2 --timeout 150 -- " +
      sibling_program(GPU_RANK_BIN) + " --check " + name + " --seed " + std::to_string(seed);
  const Outcome outcome = run(command);
  CHECK(outcome.exit_code == 0);
  CHECK_THAT(outcome.output, Catch::Contains("rank 0: verified") && Catch::Contains("rank 1: verified"));
}

}  // namespace ferry::test
