// test_gpu_low_latency_buffer: low_latency_buffer_checks.hpp on a one-rank group, a 1x2 group whose ranks are
// threads sharing the GPU, and a 1x2 `ferry launch` job whose two processes share it ([launch]:
// scripts/gpu-check runs it with the CUDA MPS daemon where the machine allows, and says which way it ran).
// gpu_main.cpp exits 77 without a GPU.
#include <catch2/catch.hpp>

#include "common/seed.hpp"
#include "gpu_check_runs.hpp"
#include "low_latency_buffer_checks.hpp"

using namespace ferry::test;

TEST_CASE("a LowLatencyBuffer on the GPU of a one-rank group matches the host executor", "[gpu]") {
  check_on_one_rank(check_low_latency_buffer, announce_seed("gpu low-latency buffer, one rank"), 20);
}

TEST_CASE("LowLatencyBuffers on the GPU of a 1x2 group (ranks as threads) match the host executor", "[gpu]") {
  check_on_rank_threads(check_low_latency_buffer, announce_seed("gpu low-latency buffer, 1x2 threads"), 20,
                        "gpu-low-latency");
}

TEST_CASE("LowLatencyBuffers on the GPU of a 1x2 ferry launch job sharing one GPU match the host executor",
          "[gpu][launch]") {
  check_on_launched_ranks("low-latency", announce_seed("gpu low-latency buffer, 1x2 processes"));
}
