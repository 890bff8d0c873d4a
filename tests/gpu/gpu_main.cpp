// Catch2 main for GPU tests: exits 77 (ctest: skipped) with the reason when this machine has no usable GPU.
//
// One seed per run: FERRY_TEST_SEED when set, else a random one that is put into the environment, so every
// test case (and every process a case starts, e.g. ranks under `ferry launch`) draws from the same seed. It
// is printed and flushed before each case starts: a case that faults or hangs on the GPU still leaves the
// number that repeats it.
#define CATCH_CONFIG_RUNNER
#include <cuda_runtime_api.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "common/seed.hpp"

namespace {

struct SeedAnnouncer : Catch::TestEventListenerBase {
  using TestEventListenerBase::TestEventListenerBase;
  void testCaseStarting(Catch::TestCaseInfo const& info) override {
    const char* seed = std::getenv("FERRY_TEST_SEED");
    std::printf("%s: seed %s (set FERRY_TEST_SEED to repeat)\n", info.name.c_str(),
                seed != nullptr ? seed : "?");
    std::fflush(stdout);
  }
};

// Listing the test cases needs no GPU (tests/scripts checks that gpu-check's filters select cases).
bool only_lists(int argc, char** argv) {
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg.rfind("--list", 0) == 0 || arg == "-l" || arg == "-t") return true;
  }
  return false;
}

}  // namespace

CATCH_REGISTER_LISTENER(SeedAnnouncer)

int main(int argc, char** argv) {
  if (only_lists(argc, argv)) return Catch::Session().run(argc, argv);
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);  // leaves `count` alone on failure: check the status
  if (status != cudaSuccess || count == 0) {
    std::printf("SKIPPED: no GPU (cudaGetDeviceCount: %s, %d devices)\n",
                status == cudaSuccess ? "ok" : cudaGetErrorName(status), status == cudaSuccess ? count : 0);
    return 77;
  }
  const std::string seed = std::to_string(ferry::test::test_seed());
  setenv("FERRY_TEST_SEED", seed.c_str(), 0);  // keeps a seed the caller chose
  return Catch::Session().run(argc, argv);
}
