#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>

#include "ferry/devices.hpp"
#include "ferry/kernels/cuda_selftest.hpp"

TEST_CASE("every visible GPU runs the self-test kernel", "[gpu]") {
  auto machine = ferry::probe_machine();
  REQUIRE_FALSE(machine.gpus.empty());
  for (const auto& gpu : machine.gpus) {
    INFO("GPU " << gpu.index << " " << gpu.name);
    CHECK(gpu.sm_count > 0);
    CHECK(ferry::kernels::cuda_selftest(gpu.index, gpu.sm_count * 4).empty());
  }
}
