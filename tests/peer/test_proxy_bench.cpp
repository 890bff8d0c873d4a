// The proxy benchmark with ranks as threads: the report has the promised shape, receivers verified every
// byte, and the noop proxy clears a (low, sanitizer-proof) throughput floor.
#include <catch2/catch.hpp>
#include <iostream>
#include <mutex>

#include "bench/proxy_bench.hpp"
#include "rank_threads.hpp"

using namespace std::chrono_literals;

TEST_CASE("proxy bench: noop throughput and ucx put_signal between 2 ranks, verified",
          "[unit][proxy][bench]") {
  ferry::tools::ProxyBenchOptions options;
  options.fabric = ferry::transport::FabricKind::ucx;
  options.noop_commands = 200'000;
  options.fabric_commands = 2'000;
  options.sizes = {8, 512, 8192};
  options.timeout = 60s;
  std::mutex mutex;
  std::vector<nlohmann::json> reports(2);
  ferry::test::run_ranks(
      2, 1, ferry::test::unique_job_id("proxy-bench"),
      [&](ferry::Group& group) {
        auto report = ferry::tools::run_proxy_bench(group, options);
        std::lock_guard<std::mutex> lock(mutex);
        reports[static_cast<std::size_t>(group.rank())] = report;
      },
      60s);
  ferry::tools::print_proxy_report(reports[0]);
  CHECK(reports[0] == reports[1]);  // every rank returns the whole job's report
  const auto& noop = reports[0]["noop"];
  REQUIRE(noop["ranks"].size() == 2);
  const double floor = 1e5;  // far below the 5 M/s target: this is a sanity check that runs under sanitizers
  CHECK(noop["min_thread_commands_per_s"].get<double>() > floor);
  const auto& fabric = reports[0]["fabric"];
  REQUIRE_FALSE(fabric.contains("skipped"));
  REQUIRE(fabric["pairs"].size() == 1);
  CHECK(fabric["pairs"][0]["sender"] == 0);
  CHECK(fabric["pairs"][0]["receiver"] == 1);
  REQUIRE(fabric["pairs"][0]["results"].size() == 3);
  for (const auto& result : fabric["pairs"][0]["results"]) {
    CHECK(result["verified"] == true);
    CHECK(result["commands"] == 2000);
    CHECK(result["commands_per_s"].get<double>() > 0);
  }
}

TEST_CASE("proxy bench: one rank measures the noop proxy and skips the fabric", "[unit][proxy][bench]") {
  ferry::tools::ProxyBenchOptions options;
  options.fabric = ferry::transport::FabricKind::ucx;
  options.noop_commands = 100'000;
  options.threads = 2;
  nlohmann::json report;
  ferry::test::run_ranks(1, 1, ferry::test::unique_job_id("proxy-bench-1"), [&](ferry::Group& group) {
    report = ferry::tools::run_proxy_bench(group, options);
  });
  CHECK(report["noop"]["ranks"][0]["threads"].size() == 2);
  CHECK(report["fabric"]["skipped"] == "needs at least 2 ranks");
  ferry::tools::ProxyBenchOptions bad;
  bad.sizes.clear();
  ferry::test::run_ranks(1, 1, ferry::test::unique_job_id("proxy-bench-bad"), [&](ferry::Group& group) {
    try {
      ferry::tools::run_proxy_bench(group, bad);
      report = "no error";
    } catch (const ferry::Error& e) {
      report = e.what();
    }
  });
  CHECK_THAT(report.get<std::string>(), Catch::Matchers::Contains("no message sizes"));
}
