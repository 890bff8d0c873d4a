// `ferry bench dispatch|combine --check` through `ferry launch` on small sizes: every rank verifies its rows,
// topk, counts and combined output, the fabric rule holds, and the JSON report has its fields.
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "../peer/launch_run.hpp"

namespace {

nlohmann::json run_bench(const std::string& op, const std::string& args) {
  const std::string json_path = ferry::test::temp_path("bench-" + op);
  auto outcome = ferry::test::run(
      std::string(FERRY_BIN) + " launch --nodes 2 --ranks-per-node 2 --timeout 120 -- " + FERRY_BIN +
      " bench " + op + " --check --iters 2 --warmup 1 --timeout 60 " + args + " --json " + json_path);
  REQUIRE(outcome.exit_code == 0);
  CHECK_THAT(outcome.output, Catch::Matchers::Contains("check: passed"));
  std::ifstream in(json_path);
  REQUIRE(in.good());
  nlohmann::json report = nlohmann::json::parse(in);
  std::remove(json_path.c_str());
  return report;
}

void check_fields(const nlohmann::json& r, const std::string& op) {
  CHECK(r["tool"] == "ferry");
  CHECK(r["op"] == op);
  CHECK(r["ranks"] == 4);
  CHECK(r["nodes"] == 2);
  CHECK(r["check"] == "passed");
  CHECK(r["errors"].empty());
  CHECK(r["per_rank"].size() == 4);
  for (const char* key : {"mean", "min", "max"}) CHECK(r["time_us"][key].get<double>() > 0);
  for (const char* path : {"fabric", "node", "self"}) {
    for (const char* key : {"rows_per_iter", "row_bytes_per_iter", "wire_bytes_per_iter", "gbps_per_rank"}) {
      CHECK(r["paths"][path].contains(key));
    }
  }
  CHECK(r["deepep"]["rdma_gbps"].get<double>() > 0);
  CHECK(r["deepep"]["nvl_gbps"].get<double>() > 0);
  // One crossing per token and remote node, exactly: no more (the rule), no fewer (every row arrived).
  CHECK(r["fabric_rule"]["measured_rows"].get<double>() == r["fabric_rule"]["predicted_rows"].get<double>());
  CHECK(r["fabric_rule"]["within"] == true);
}

}  // namespace

TEST_CASE("bench dispatch --check on 2 nodes x 2 ranks, bf16", "[multiprocess]") {
  auto r = run_bench("dispatch", "--tokens 256 --hidden 256 --topk 4 --experts 16 --num-sms 4");
  check_fields(r, "dispatch");
  CHECK(r["dtype"] == "bf16");
  CHECK(r["row_bytes"] == 512);
}

TEST_CASE("bench combine --check --fp8 on 2 nodes x 2 ranks, hidden not a multiple of 128",
          "[multiprocess]") {
  auto r = run_bench("combine", "--fp8 --tokens 256 --hidden 200 --topk 4 --experts 16 --num-sms 4 --skew 1");
  check_fields(r, "combine");
  CHECK(r["fp8"] == true);
  CHECK(r["row_bytes"] == 400);  // combine returns bf16 rows
}

TEST_CASE("bench dispatch --check --fp8 with max-nodes 1", "[multiprocess]") {
  auto r =
      run_bench("dispatch", "--fp8 --tokens 128 --hidden 200 --topk 2 --experts 8 --max-nodes 1 --num-sms 2");
  check_fields(r, "dispatch");
  CHECK(r["row_bytes"] == 200 + 2 * 4);
}
