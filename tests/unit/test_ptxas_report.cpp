// The ptxas resource checker (tools/cuda_resources) on canned ptxas output: parsing, kernel names, the
// occupancy arithmetic, and every way check_kernels fails (spills, shapes that do not fit, missing or stale
// lines, a missing architecture).
#include <catch2/catch.hpp>
#include <sstream>

#include "cuda_resources/ptxas_report.hpp"

namespace cr = ferry::tools::cuda_resources;

namespace {

// As nvcc 13 prints it for two kernels (one spilling, one calling a device function that was not inlined).
const char* const kLog = R"(ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3bigILi200EEvPf' for 'sm_80'
ptxas info    : Function properties for _Z3bigILi200EEvPf
    816 bytes stack frame, 16 bytes spill stores, 16 bytes spill loads
ptxas info    : Used 64 registers, used 0 barriers, 816 bytes cumulative stack size, 360 bytes cmem[0]
ptxas info    : Compile time = 237.110 ms
ptxas info    : Compiling entry function '_Z3toyPfi' for 'sm_80'
ptxas info    : Function properties for _Z3toyPfi
    256 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 256 bytes cumulative stack size, 1024 bytes smem, 364 bytes cmem[0]
ptxas info    : Compile time = 9.461 ms
ptxas info    : Function properties for _Z6helperPfi
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : 0 bytes gmem
ptxas info    : Compiling entry function '_Z3toyPfi' for 'sm_90a'
ptxas info    : Function properties for _Z3toyPfi
    256 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
ptxas info    : Used 32 registers, used 1 barriers, 256 bytes cumulative stack size, 1024 bytes smem
)";

std::vector<cr::FunctionUsage> parse(const std::string& text) {
  std::istringstream in(text);
  return cr::parse_ptxas_log(in);
}

std::vector<cr::KernelShape> shapes(const std::string& text) {
  std::istringstream in(text);
  return cr::parse_shapes(in, "k.shapes");
}

bool has_failure(const cr::CheckOutcome& outcome, const std::string& text) {
  for (const auto& failure : outcome.failures) {
    if (failure.find(text) != std::string::npos) return true;
  }
  return false;
}

cr::FunctionUsage kernel(const std::string& arch, int registers, long shared = 0) {
  cr::FunctionUsage usage;
  usage.mangled = usage.name = "k";
  usage.arch = arch;
  usage.entry = true;
  usage.registers = registers;
  usage.shared_bytes = shared;
  return usage;
}

cr::KernelShape shape(int threads, int blocks, long dynamic = 0) {
  return cr::KernelShape{"k", threads, blocks, dynamic, 1};
}

}  // namespace

TEST_CASE("ptxas -v output parses into functions per architecture") {
  const auto usage = parse(kLog);
  REQUIRE(usage.size() == 4);
  CHECK(usage[0].name == "void big<200>(float*)");
  CHECK(usage[0].arch == "sm_80");
  CHECK(usage[0].entry);
  CHECK(usage[0].registers == 64);
  CHECK(usage[0].spill_store_bytes == 16);
  CHECK(usage[0].spill_load_bytes == 16);
  CHECK(usage[0].stack_bytes == 816);
  CHECK(usage[1].name == "toy(float*, int)");
  CHECK(usage[1].registers == 32);
  CHECK(usage[1].barriers == 1);
  CHECK(usage[1].shared_bytes == 1024);
  CHECK(usage[2].name == "helper(float*, int)");
  CHECK_FALSE(usage[2].entry);
  CHECK(usage[3].arch == "sm_90a");
  CHECK(usage[3].shared_bytes == 1024);
  CHECK_THROWS_WITH(parse("    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n"),
                    Catch::Contains("before any function"));
}

TEST_CASE("kernel names lose scope, template arguments, parameters and return type") {
  CHECK(cr::base_name(
            "void ferry::ns::(anonymous namespace)::copy_kernel<4>(uint4 const*, uint4*, unsigned long)") ==
        "copy_kernel");
  CHECK(cr::base_name("ferry::gpu_bench::detail::(anonymous namespace)::sm_probe_kernel(int*)") ==
        "sm_probe_kernel");
  CHECK(cr::base_name("void dispatch<Policy<(Scope)1>, 7168>(Args<float>)") == "dispatch");
  CHECK(cr::base_name("plain_c_kernel") == "plain_c_kernel");
}

TEST_CASE("shape files: comments, blank lines, malformed and repeated lines") {
  const auto parsed = shapes("# comment\n\ncopy_kernel 1024 1 118784  # trailing comment\nother 256 8 0\n");
  REQUIRE(parsed.size() == 2);
  CHECK(parsed[0].name == "copy_kernel");
  CHECK(parsed[0].threads == 1024);
  CHECK(parsed[0].dynamic_shared_bytes == 118784);
  CHECK(parsed[1].line == 4);
  CHECK_THROWS_WITH(shapes("a 256 1\n"), Catch::Contains("k.shapes:1: expected"));
  CHECK_THROWS_WITH(shapes("a 256 0 0\n"), Catch::Contains("k.shapes:1"));
  CHECK_THROWS_WITH(shapes("a 256 1 0 extra\n"), Catch::Contains("k.shapes:1"));
  CHECK_THROWS_WITH(shapes("a 256 1 0\na 128 1 0\n"), Catch::Contains("k.shapes:2: a is already on line 1"));
}

TEST_CASE("blocks per SM follow the occupancy calculator on A100 and H100 limits") {
  for (const char* arch : {"sm_80", "sm_90a"}) {
    INFO(arch);
    CHECK(cr::blocks_that_fit(kernel(arch, 32), shape(256, 1)) == 8);   // threads bound: 2048 / 256
    CHECK(cr::blocks_that_fit(kernel(arch, 64), shape(1024, 1)) == 1);  // registers: 64 x 1024 = 65536
    CHECK(cr::blocks_that_fit(kernel(arch, 65), shape(1024, 1)) == 0);  // one register too many
    CHECK(cr::blocks_that_fit(kernel(arch, 255), shape(128, 1)) == 2);  // 8 warps' worth of registers
    CHECK(cr::blocks_that_fit(kernel(arch, 32), shape(2048, 1)) == 0);  // more threads than a block may have
  }
  // Shared memory differs: 164 KiB per SM on A100, 228 KiB on H100 (1 KiB reserved per block).
  CHECK(cr::blocks_that_fit(kernel("sm_80", 32), shape(256, 1, 100 << 10)) == 1);
  CHECK(cr::blocks_that_fit(kernel("sm_90a", 32), shape(256, 1, 100 << 10)) == 2);
  CHECK(cr::blocks_that_fit(kernel("sm_80", 32), shape(256, 1, 200 << 10)) == 0);
  CHECK(cr::blocks_that_fit(kernel("sm_90a", 32, 8 << 10), shape(256, 1, 116 << 10)) == 1);
  CHECK_THROWS_WITH(cr::blocks_that_fit(kernel("sm_75", 32), shape(256, 1)),
                    Catch::Contains("no SM limits known"));
}

TEST_CASE("check_kernels passes a clean table and names every failure") {
  const std::vector<std::string> archs{"sm_80", "sm_90a"};
  auto usage = parse(kLog);
  usage.erase(usage.begin());  // `big` spills; checked below
  const auto good = cr::check_kernels(usage, shapes("toy 256 4 0\n"), archs, "k.shapes");
  INFO(good.table);
  CHECK(good.failures.empty());
  CHECK_THAT(good.table, Catch::Contains("| toy | sm_80 | 256 | 32 | 1024 | 0 | 256 | 0/0 | 4 | 8 |"));

  const auto too_many = cr::check_kernels(usage, shapes("toy 1024 2 100000\n"), archs, "k.shapes");
  CHECK(has_failure(too_many, "toy on sm_80: 1 blocks of 1024 threads fit on one SM"));
  CHECK(has_failure(too_many, "k.shapes:1 needs 2"));

  const auto all = parse(kLog);
  const auto spilling = cr::check_kernels(all, shapes("toy 256 1 0\nbig 1024 1 0\n"), archs, "k.shapes");
  CHECK(has_failure(spilling,
                    "void big<200>(float*) on sm_80 spills registers: 16 bytes stored, 16 bytes loaded"));
  CHECK(has_failure(spilling, "kernel big has no sm_90a build"));

  const auto unlisted = cr::check_kernels(usage, shapes("stale 256 1 0\n"), archs, "k.shapes");
  CHECK(has_failure(unlisted, "kernel toy(float*, int) (sm_80) has no line in k.shapes"));
  CHECK(has_failure(unlisted, "k.shapes:1: no kernel stale in the ptxas output"));

  CHECK(has_failure(cr::check_kernels({}, {}, archs, "k.shapes"), "no ptxas output"));
}
