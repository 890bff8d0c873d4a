// The public ferry::Buffer on Device::cuda, as users call it (buffer_checks.hpp says what is checked): a
// one-rank group, a 1x2 group whose ranks are threads of this process, and a 1x2 `ferry launch` job whose two
// processes share the GPU ([launch]: scripts/gpu-check runs it with the CUDA MPS daemon where the machine
// allows, and says which way it ran). gpu_main.cpp exits 77 without a GPU.
#include <catch2/catch.hpp>

#include "buffer_checks.hpp"
#include "common/seed.hpp"
#include "gpu_check_runs.hpp"

using namespace ferry::test;

TEST_CASE("a CUDA Buffer of a one-rank group matches the host reference", "[gpu]") {
  check_on_one_rank(check_cuda_buffer, announce_seed("gpu buffer, one rank"), 10);
}

TEST_CASE("CUDA Buffers of a 1x2 group in one process (ranks as threads) match the host reference", "[gpu]") {
  check_on_rank_threads(check_cuda_buffer, announce_seed("gpu buffer, 1x2 threads"), 10, "gpu-buffer");
}

TEST_CASE("CUDA Buffers of a 1x2 ferry launch job sharing one GPU match the host reference",
          "[gpu][launch]") {
  check_on_launched_ranks("buffer", announce_seed("gpu buffer, 1x2 processes"));
}
