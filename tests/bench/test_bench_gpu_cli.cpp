// `ferry bench gpu-copy` and `ferry bench gpu-gemm` from the command line: bad input is refused by name
// everywhere; without a GPU (or without CUDA) they say so and exit non-zero; with one, they print a table.
#include <sys/wait.h>

#include <array>
#include <catch2/catch.hpp>
#include <cstdio>
#include <string>

#include "ferry/devices.hpp"

namespace {

struct Run {
  int status = -1;
  std::string output;
};

Run run_ferry(const std::string& arguments) {
  const std::string command = std::string(FERRY_BIN) + " " + arguments + " 2>&1";
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  Run run;
  std::array<char, 4096> buffer{};
  while (std::fgets(buffer.data(), buffer.size(), pipe) != nullptr) run.output += buffer.data();
  const int status = pclose(pipe);
  run.status = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return run;
}

bool have_gpu() {
  return !ferry::probe_machine().gpus.empty();
}

}  // namespace

TEST_CASE("ferry bench gpu-copy refuses a bad SM list by name") {
  const Run run = run_ferry("bench gpu-copy --sms 4,x");
  INFO(run.output);
  CHECK(run.status == 2);  // a usage error
  CHECK_THAT(
      run.output,
      Catch::Contains("ferry bench gpu-copy: --sms: 'x' is neither a positive number of SMs nor 'all'"));
}

TEST_CASE("ferry bench gpu-copy and gpu-gemm say why they cannot run, or run small") {
  if (have_gpu()) {
    const Run copy = run_ferry("bench gpu-copy --sms 2,all --bytes 32M --iters 2");
    INFO(copy.output);
    CHECK(copy.status == 0);
    CHECK_THAT(copy.output, Catch::Contains("copy kernel, 2 SMs") && Catch::Contains("cudaMemcpy D2D"));
    const Run gemm = run_ferry("bench gpu-gemm --comm-sms 16 --size 1024 --iters 2 --load-bytes 16M");
    INFO(gemm.output);
    CHECK(gemm.status == 0);
    CHECK_THAT(gemm.output, Catch::Contains("slowdown beside the load"));
    return;
  }
#if defined(FERRY_HAVE_CUDA)
  const char* reason = "no usable GPU";
#else
  const char* reason = "has no CUDA";
#endif
  for (const char* command : {"bench gpu-copy", "bench gpu-gemm"}) {
    const Run run = run_ferry(command);
    INFO(command << ": " << run.output);
    CHECK(run.status == 1);
    CHECK_THAT(run.output, Catch::Contains(std::string(command) + ": ") && Catch::Contains(reason));
  }
}
