// The MPI baseline ferry-alltoallv under mpirun on small sizes: its own --check passes and both reports are
// written. Reported skipped (exit 77) when the baseline was not built or mpirun is missing.
#include <catch2/catch.hpp>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "../peer/launch_run.hpp"
#include "common/skip.hpp"

TEST_CASE("ferry-alltoallv --check under mpirun with 4 ranks", "[multiprocess]") {
#ifndef FERRY_ALLTOALLV_BIN
  ferry::test::skip("ferry-alltoallv was not built (no MPI found at configure time)");
#else
  if (std::system("command -v mpirun > /dev/null 2>&1") != 0) {
    ferry::test::skip("mpirun is not on PATH");
  }
  const std::string json_path = ferry::test::temp_path("bench-alltoallv");
  // ob1 + shared memory: the UCX pml is not needed on one machine and misbehaves in containers. Open MPI
  // leaks by design at MPI_Finalize (its dlopen-ed components keep their allocations), so under the asan
  // preset LeakSanitizer is off for this baseline program only.
  auto outcome = ferry::test::run(
      "timeout 120 env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 "
      "ASAN_OPTIONS=${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0 "
      "OMPI_MCA_rmaps_base_oversubscribe=1 "
      "mpirun --mca pml ob1 --mca btl self,vader -np 4 " +
      std::string(FERRY_ALLTOALLV_BIN) +
      " --ranks-per-node 2 --tokens 256 --hidden 200 --topk 4 --experts 16 --fp8 --iters 2 --warmup 1 "
      "--check "
      "--json " +
      json_path);
  REQUIRE(outcome.exit_code == 0);
  std::ifstream in(json_path);
  REQUIRE(in.good());
  nlohmann::json report = nlohmann::json::parse(in);
  std::remove(json_path.c_str());
  for (const char* op : {"dispatch", "combine"}) {
    const auto& r = report[op];
    CHECK(r["tool"] == "alltoallv");
    CHECK(r["op"] == op);
    CHECK(r["ranks"] == 4);
    CHECK(r["check"] == "passed");
    CHECK(r["time_us"]["mean"].get<double>() > 0);
    // One copy per (token, expert): at least as many fabric rows as ferry's one per (token, remote node).
    CHECK(r["fabric_rule"]["measured_rows"].get<double>() >=
          r["fabric_rule"]["predicted_rows"].get<double>());
  }
#endif
}
