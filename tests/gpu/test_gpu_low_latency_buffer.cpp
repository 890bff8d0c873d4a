// test_gpu_low_latency_buffer: low_latency_buffer_checks.hpp on a one-rank group, a 1x2 group whose ranks are
// threads sharing the GPU, and a 1x2 `ferry launch` job whose two processes share it ([launch]:
// scripts/gpu-check runs it with the CUDA MPS daemon where the machine allows, and says which way it ran).
// gpu_main.cpp exits 77 without a GPU.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "common/seed.hpp"
#include "common/sibling_program.hpp"
#include "ferry/group.hpp"
#include "low_latency_buffer_checks.hpp"
#include "peer/launch_run.hpp"
#include "peer/rank_threads.hpp"

using namespace ferry;
using namespace ferry::test;

TEST_CASE("a LowLatencyBuffer on the GPU of a one-rank group matches the host executor", "[gpu]") {
  const std::uint64_t seed = announce_seed("gpu low-latency buffer, one rank");
  Group group = Group::from_job(JobEnv{});
  const LowLatencyCheckResult result = check_low_latency_buffer(group, seed);
  INFO(result.failure);
  CHECK(result.failure.empty());
  CHECK(result.checks > 20);
}

TEST_CASE("LowLatencyBuffers on the GPU of a 1x2 group (ranks as threads) match the host executor", "[gpu]") {
  const std::uint64_t seed = announce_seed("gpu low-latency buffer, 1x2 threads");
  std::vector<LowLatencyCheckResult> results(2);
  REQUIRE_NOTHROW(run_ranks(
      2, 2, unique_job_id("gpu-low-latency"),
      [&](Group& group) { results[group.rank()] = check_low_latency_buffer(group, seed); },
      std::chrono::seconds(60)));
  for (int r = 0; r < 2; ++r) {
    INFO("rank " << r << ": " << results[r].failure);
    CHECK(results[r].failure.empty());
    CHECK(results[r].checks > 20);
  }
}

TEST_CASE("LowLatencyBuffers on the GPU of a 1x2 ferry launch job sharing one GPU match the host executor",
          "[gpu][launch]") {
  const std::uint64_t seed = announce_seed("gpu low-latency buffer, 1x2 processes");
  const std::string command =
      sibling_program(FERRY_BIN) + " launch --nodes 1 --ranks-per-node 2 --timeout 150 -- " +
      sibling_program(GPU_RANK_BIN) + " --check low-latency --seed " + std::to_string(seed);
  const Outcome outcome = run(command);
  CHECK(outcome.exit_code == 0);
  CHECK_THAT(outcome.output, Catch::Contains("rank 0: verified") && Catch::Contains("rank 1: verified"));
}
