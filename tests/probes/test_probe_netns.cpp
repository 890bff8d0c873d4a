// `ferry launch --netns --link-gbps` with one rate per node makes a slow node, and `ferry probe fabric` names
// exactly that node (and every link through it), on the emulated cluster.
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "../peer/launch_run.hpp"
#include "common/netns.hpp"

TEST_CASE("probe fabric names the one node whose link is shaped slower", "[netns]") {
  SKIP_WITHOUT_NETNS();
  const std::string json = ferry::test::temp_path("probe-fabric-netns");
  const std::string ferry = FERRY_BIN;
  // Fast links shaped well below what loopback TCP gives, so that they measure the shaper and not the CPU;
  // node 2 at an eighth of that.
  const auto outcome =
      ferry::test::run(ferry + " launch --nodes 3 --netns --link-gbps 4,4,0.5 --timeout 120 -- " + ferry +
                       " probe fabric --bytes 16M --latency-iters 20 --timeout 60 --json " + json);
  REQUIRE(outcome.exit_code == 0);
  std::ifstream in(json);
  REQUIRE(in.good());
  const auto r = nlohmann::json::parse(in);
  std::remove(json.c_str());
  REQUIRE(r["slow_endpoints"].size() == 1);
  CHECK(r["slow_endpoints"][0]["endpoint"] == 2);
  CHECK_THAT(r["slow_endpoints"][0]["name"].get<std::string>(), Catch::StartsWith("node 2 (node2, 10."));
  CHECK_THAT(outcome.output, Catch::Contains("SLOW NODE node 2 (node2"));
  // Every link to or from node 2 is named, at roughly its shaped rate (0.5 Gbit/s = 0.0625 GB/s).
  int through_slow = 0;
  for (const auto& l : r["slow_links"]) {
    if (l["from"] == 2 || l["to"] == 2) {
      ++through_slow;
      CHECK(l["gbps"].get<double>() < 0.2);
    }
  }
  CHECK(through_slow == 4);
}
