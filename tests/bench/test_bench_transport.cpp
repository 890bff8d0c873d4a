// `ferry bench transport` end to end through `ferry launch` (2 nodes x 1 rank over ucx): the table on stdout
// and the JSON report, with every measurement of every size present and plausible.
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "../peer/launch_run.hpp"

TEST_CASE("bench transport on 2 nodes: put, latency, TCP and memcpy per size, table and JSON",
          "[multiprocess]") {
  const std::string json_path = ferry::test::temp_path("bench-transport");
  const auto outcome = ferry::test::run(
      std::string(FERRY_BIN) + " launch --nodes 2 --ranks-per-node 1 --timeout 60 -- " + FERRY_BIN +
      " bench transport --fabric ucx --sizes 4K,64K --iters 4 --timeout 30 --json " + json_path);
  REQUIRE(outcome.exit_code == 0);
  CHECK_THAT(outcome.output, Catch::Contains("pair rank 0 -> rank 1") && Catch::Contains("put GB/s") &&
                                 Catch::Contains("4 KiB") && Catch::Contains("64 KiB") &&
                                 Catch::Contains("wrote " + json_path));
  std::ifstream in(json_path);
  REQUIRE(in.good());
  const nlohmann::json report = nlohmann::json::parse(in);
  std::remove(json_path.c_str());

  CHECK(report["benchmark"] == "transport");
  CHECK(report["fabric"]["kind"] == "ucx");
  CHECK(report["job"]["world_size"] == 2);
  CHECK(report["job"]["nodes"] == 2);
  CHECK(report["options"]["iters"] == 4);
  REQUIRE(report["pairs"].size() == 1);  // rank r with rank r + W/2
  const auto& pair = report["pairs"][0];
  CHECK(pair["sender"] == 0);
  CHECK(pair["receiver"] == 1);
  REQUIRE(pair["results"].size() == 2);
  const std::size_t sizes[] = {4096, 65536};
  for (std::size_t i = 0; i < 2; ++i) {
    const auto& row = pair["results"][i];
    INFO(row.dump());
    CHECK(row["bytes"] == sizes[i]);
    CHECK(row["put_iters"] == 4);
    CHECK(row["latency_iters"] == 4);
    for (const char* key : {"put_gbps", "put_latency_us", "tcp_gbps", "tcp_latency_us", "memcpy_gbps"}) {
      INFO(key);
      CHECK(row[key].get<double>() > 0);
    }
    // A half round trip over loopback takes microseconds, not a second; a put of 64 KiB moves far below
    // memcpy.
    CHECK(row["put_latency_us"].get<double>() < 1e6);
    CHECK(row["put_gbps"].get<double>() < 1e3);
  }
}
