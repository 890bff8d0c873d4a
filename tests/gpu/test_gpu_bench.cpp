// The GPU bounds library (tools/bench/gpu/gpu_bench.hpp) on a GPU, at small sizes: every figure is positive
// and its output checked (the functions throw otherwise), SM counts are honoured, bad arguments are refused.
#include <algorithm>
#include <catch2/catch.hpp>

#include "bench/gpu/gpu_bench.hpp"
#include "ferry/core/error.hpp"

namespace gb = ferry::gpu_bench;

TEST_CASE("gpu bench: the SM-bounded copy kernel and the device copy", "[gpu]") {
  const auto gpu = gb::describe_gpu(0);
  REQUIRE(gpu.sms > 0);
  const std::size_t bytes = (64 << 20) + 48;  // not a power of two: the tail loop runs too
  const int few = std::min(4, gpu.sms);
  const auto small = gb::measure_copy_kernel(0, few, bytes, 3);
  const auto full = gb::measure_copy_kernel(0, gpu.sms, bytes, 3);
  CHECK(small.sms == few);
  CHECK(small.gbps > 0);
  CHECK(full.gbps > 0);
  INFO("copy kernel: " << small.gbps << " GB/s on " << few << " SMs, " << full.gbps << " GB/s on all "
                       << gpu.sms);
  CHECK(full.gbps > small.gbps);  // more SMs move more bytes (checks that the grid size matters)
  CHECK(gb::measure_device_copy(0, bytes, 3) > 0);
  CHECK_THROWS_AS(gb::measure_copy_kernel(0, 0, bytes, 3), ferry::Error);
  CHECK_THROWS_AS(gb::measure_copy_kernel(0, gpu.sms + 1, bytes, 3), ferry::Error);
  CHECK_THROWS_AS(gb::measure_copy_kernel(0, 1, 8, 3), ferry::Error);
}

TEST_CASE("gpu bench: SM partitions and a GEMM beside a copy load", "[gpu]") {
  const auto gpu = gb::describe_gpu(0);
  const int comm_sms = std::min(16, gpu.sms / 2);
  {
    gb::SmPartition partition(0, comm_sms);
    INFO("mode: " << partition.mode());
    CHECK_FALSE(partition.mode().empty());
    CHECK(partition.compute_stream() != partition.comm_stream());
    if (partition.green()) {
      CHECK(partition.comm_sms() >= comm_sms);
      CHECK(partition.compute_sms() + partition.comm_sms() <= gpu.sms);
    } else {
      CHECK(partition.compute_sms() == gpu.sms);
    }
  }
  gb::SmPartition plain(0, comm_sms, false);
  CHECK_FALSE(plain.green());
  CHECK_THAT(plain.mode(), Catch::Contains("plain streams"));
  CHECK_THROWS_AS(gb::SmPartition(0, gpu.sms), ferry::Error);

  gb::CopyKernelLoad load(0, comm_sms, 32 << 20);
  gb::GemmOptions options;
  options.m = 2048;
  options.n = 1024;
  options.k = 4096;
  options.iters = 3;
  const auto result = gb::measure_gemm_overlap(
      0, comm_sms, [&](void* stream) { load(stream); }, options);
  INFO("mode: " << result.mode);
  CHECK(result.tflops_full > 0);
  CHECK(result.tflops_alone > 0);
  CHECK(result.tflops_loaded > 0);
  CHECK(result.comm_ms_alone > 0);
  CHECK(result.comm_covered);
}
