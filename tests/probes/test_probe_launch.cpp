// `ferry probe fabric` on real processes: under `ferry launch` without namespaces (nodes on loopback), and
// under Open MPI's mpirun on one box. The JSON is checked against what the options imply: bytes and puts of
// every link, the rounds of the schedule, one pair per endpoint and round, and the heatmap's cells.
#include <catch2/catch.hpp>
#include <cstdio>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "../peer/launch_run.hpp"
#include "common/loopback.hpp"
#include "common/skip.hpp"
#include "ferry/config.hpp"
#include "ferry/model/pipeline/schedule.hpp"
#include "svg_check.hpp"

namespace {

const std::string kFerry = FERRY_BIN;

// A command's output and the JSON report it wrote (`--json <a temporary file>` is appended); the command must
// exit 0.
struct JsonRun {
  ferry::test::Outcome outcome;
  nlohmann::json report;
};

nlohmann::json read_json(const std::string& path);

JsonRun run_with_json(const std::string& command, const std::string& stem) {
  const std::string path = ferry::test::temp_path(stem);
  JsonRun run{ferry::test::run(command + " --json " + path), {}};
  REQUIRE(run.outcome.exit_code == 0);
  run.report = read_json(path);
  return run;
}

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  REQUIRE(in.good());
  auto json = nlohmann::json::parse(in);
  std::remove(path.c_str());
  return json;
}

// What every fabric report must hold for `endpoints` endpoints, `puts` puts of `size` bytes per link.
void check_matrix(const nlohmann::json& r, int endpoints, int puts, std::uint64_t size, int latency_iters) {
  CHECK(r["probe"] == "fabric");
  CHECK(r["message_bytes"] == size);
  REQUIRE(r["endpoints"].size() == static_cast<std::size_t>(endpoints));
  const int rounds = endpoints % 2 == 0 ? endpoints - 1 : endpoints;
  CHECK(r["rounds"] == rounds);
  REQUIRE(r["links"].size() == static_cast<std::size_t>(endpoints * (endpoints - 1)));
  std::set<std::pair<int, int>> seen;
  std::map<std::pair<int, int>, int> endpoint_in_round;  // (round, endpoint) -> partner
  for (const auto& l : r["links"]) {
    const int from = l["from"], to = l["to"], round = l["round"];
    INFO("link " << from << " -> " << to);
    CHECK(seen.insert({from, to}).second);
    CHECK(l["bytes"] == static_cast<std::uint64_t>(puts) * size);
    CHECK(l["puts"] == puts);
    CHECK(l["warmup_puts"] == 2);
    CHECK(l["latency_iters"] == latency_iters);
    CHECK(l["latency_us"].get<double>() > 0);
    CHECK(l["gbps"].get<double>() > 0);
    CHECK(l["gbps"].get<double>() ==
          Approx(l["bytes"].get<double>() / l["seconds"].get<double>() / 1e9).epsilon(1e-9));
    CHECK(r["gbps"][from][to].get<double>() == l["gbps"].get<double>());
    CHECK(round >= 0);
    CHECK(round < rounds);
    // Each endpoint sends to one peer per round; both directions of a pair share their round.
    auto [it, fresh] = endpoint_in_round.insert({{round, from}, to});
    CHECK((fresh || it->second == to));
  }
  for (const auto& l : r["links"]) {
    CHECK(endpoint_in_round.at({l["round"].get<int>(), l["to"].get<int>()}) == l["from"].get<int>());
  }
  for (int e = 0; e < endpoints; ++e) CHECK(r["gbps"][e][e].is_null());
}

}  // namespace

TEST_CASE("probe fabric on 3 nodes x 2 ranks without namespaces: the matrix matches the schedule",
          "[multiprocess]") {
  const std::string svg = ferry::test::temp_path("probe-fabric-svg");
  const auto [outcome, r] =
      run_with_json(kFerry + " launch --nodes 3 --ranks-per-node 2 --timeout 120 -- " + kFerry +
                        " probe fabric --size 64K --bytes 256K --latency-iters 20 "
                        "--timeout 60 --plot " +
                        svg,
                    "probe-fabric-json");
  CHECK_THAT(outcome.output, Catch::Contains("put bandwidth, GB/s"));
  CHECK(r["level"] == "node");
  CHECK(r["job"]["launcher"] == "ferry launch");
  check_matrix(r, 3, 4, 64 * 1024, 20);
  for (int e = 0; e < 3; ++e) CHECK(r["endpoints"][e]["rank"] == 2 * e);  // local rank 0 of each node

  const auto parsed = ferry::test::parse_svg_file(svg);
  REQUIRE(parsed.error.empty());
  CHECK(parsed.find("rect", "cell").size() == 6);
  CHECK(parsed.find("rect", "slow").size() == r["slow_links"].size());
}

TEST_CASE("probe fabric under mpirun on one box: ranks are the endpoints", "[multiprocess]") {
  if (ferry::test::run("command -v mpirun").exit_code != 0)
    ferry::test::skip("mpirun (Open MPI) is not installed");
  // Root needs --allow-run-as-root; --oversubscribe lets 4 ranks share fewer cores. Rank 0 hosts ferry's
  // store on MASTER_PORT + 1 (README: "Real launchers").
  const int store_port = ferry::test::free_loopback_port();
  const auto r =
      run_with_json("MASTER_ADDR=127.0.0.1 MASTER_PORT=" + std::to_string(store_port - 1) +
                        " mpirun --allow-run-as-root --oversubscribe -x MASTER_ADDR -x MASTER_PORT -np 4 " +
                        kFerry + " probe fabric --size 16K --bytes 32K --latency-iters 10 --timeout 60",
                    "probe-fabric-mpirun")
          .report;
  CHECK(r["level"] == "rank");
  CHECK(r["job"]["launcher"] == "Open MPI");
  CHECK(r["job"]["world_size"] == 4);
  check_matrix(r, 4, 2, 16 * 1024, 10);
}

TEST_CASE("probe fabric alone says why one rank has no link", "[multiprocess]") {
  const auto outcome = ferry::test::run(kFerry + " probe fabric");
  CHECK(outcome.exit_code == 2);  // the job cannot do what was asked: found before any work
  CHECK_THAT(outcome.output, Catch::Contains("a link needs two"));
}

TEST_CASE("bench dispatch --sweep on 2 nodes: points, percentiles, the best saved as a Config, the plot",
          "[multiprocess]") {
  const std::string config = ferry::test::temp_path("sweep-config");
  const std::string svg = ferry::test::temp_path("sweep-svg");
  const auto [outcome, r] = run_with_json(
      kFerry + " launch --nodes 2 --ranks-per-node 1 --timeout 120 -- " + kFerry +
          " bench dispatch --tokens 64 --hidden 128 --topk 2 --experts 4 --iters 3 --warmup 1 --check "
          "--timeout 60"
          " --sweep --sweep-sms 2,4 --sweep-rdma-chunk 4,64 --sweep-nvl-chunk 4 --save-config " +
          config + " --plot " + svg,
      "sweep-json");
  CHECK(outcome.output.find('\r') == std::string::npos);  // no terminal, no bar: one line per point
  CHECK_THAT(outcome.output, Catch::Contains("[4/4] num_sms 4, rdma_chunk 64, nvl_chunk 4: skipped"));
  REQUIRE(r["points"].size() == 4);
  int measured = 0;
  for (const auto& p : r["points"]) {
    if (p.contains("skipped")) {
      CHECK(p["config"]["rdma_chunk"] == 64);
      continue;
    }
    ++measured;
    CHECK(p["check"] == "passed");
    CHECK(p["latency_us"]["samples"] == 2 * 3);  // every rank's timed iterations
    CHECK(p["latency_us"]["p50"].get<double>() <= p["latency_us"]["p99"].get<double>());
    CHECK(p["deepep"]["rdma_gbps"].get<double>() > 0);
    CHECK(p["fabric_rule"]["measured_rows"] == p["fabric_rule"]["predicted_rows"]);
  }
  CHECK(measured == 2);
  const int best = r["best_index"];
  for (const auto& p : r["points"]) {
    if (!p.contains("skipped"))
      CHECK(r["best"]["time_us"]["mean"].get<double>() <= p["time_us"]["mean"].get<double>());
  }
  // The best point is printed last and loads as the runtime's Config.
  CHECK_THAT(outcome.output.substr(outcome.output.rfind("best:")),
             Catch::Contains("num_sms " + std::to_string(r["points"][best]["config"]["num_sms"].get<int>())));
  const ferry::Config loaded = ferry::Config::load(config);
  std::remove(config.c_str());
  CHECK(loaded.num_sms == r["best"]["config"]["num_sms"].get<int>());
  CHECK(loaded.rdma_chunk == r["best"]["config"]["rdma_chunk"].get<int>());
  CHECK(loaded.max_hidden == 128);

  const auto parsed = ferry::test::parse_svg_file(svg);
  REQUIRE(parsed.error.empty());
  CHECK(parsed.find("circle", "point").size() == 2);
  CHECK(parsed.find("circle", "best").size() == 1);
}

TEST_CASE("probe overlap on 2 nodes: GEMM and dispatch/combine alone and together", "[multiprocess]") {
  const auto [outcome, r] =
      run_with_json(kFerry + " launch --nodes 2 --ranks-per-node 1 --timeout 120 -- " + kFerry +
                        " probe overlap --tokens 64 --hidden 128 --topk 2 --experts 4 "
                        "--round-trips 3 --gemm-size 64 --num-sms 2 --timeout 60",
                    "overlap-json");
  CHECK_THAT(outcome.output, Catch::Contains("of the shorter one was hidden"));
  REQUIRE(r["ranks"].size() == 2);
  for (const auto& rank : r["ranks"]) {
    INFO(rank.dump());
    CHECK(rank["gemms"].get<int>() >= 1);
    for (const char* key : {"comm_alone_s", "gemm_alone_s", "comm_together_s", "gemm_together_s"}) {
      CHECK(rank[key].get<double>() > 0);
    }
    // Both ran inside the span "both" measures.
    for (const char* key : {"comm_together_s", "gemm_together_s"}) {
      CHECK(rank["both_s"].get<double>() >= rank[key].get<double>());
    }
    const double shorter = std::min(rank["comm_alone_s"].get<double>(), rank["gemm_alone_s"].get<double>());
    CHECK(rank["overlap"].get<double>() ==
          Approx((rank["comm_alone_s"].get<double>() + rank["gemm_alone_s"].get<double>() -
                  rank["both_s"].get<double>()) /
                 shorter));
    CHECK(rank["comm_slowdown"].get<double>() ==
          Approx(rank["comm_together_s"].get<double>() / rank["comm_alone_s"].get<double>()));
  }
  CHECK(r["mean"]["both_s"].get<double>() ==
        Approx((r["ranks"][0]["both_s"].get<double>() + r["ranks"][1]["both_s"].get<double>()) / 2));
}

TEST_CASE("probe overlap --schedule dualpipe: the op list ran, each op at least its compute",
          "[multiprocess]") {
  const auto r =
      run_with_json(kFerry + " launch --nodes 2 --ranks-per-node 1 --timeout 120 -- " + kFerry +
                        " probe overlap --tokens 64 --hidden 128 --topk 2 --experts 4 --round-trips 2 "
                        "--num-sms 2 --timeout 60 --schedule dualpipe --pp 2 --micro-batches 4 "
                        "--pp-rank 1 --compute-ms 1,2,0.5",
                    "schedule-json")
          .report;
  CHECK(r["schedule"] == "dualpipe");
  CHECK(r["pp_rank"] == 1);
  // The counts of pipeline rank 1's list (model/pipeline/schedule.hpp).
  namespace pl = ferry::model::pipeline;
  std::map<std::string, int> expected;
  for (const pl::Op& op : pl::rank_schedule({pl::ScheduleKind::dualpipe, 2, 4}, 1))
    ++expected[pl::to_string(op.kind)];
  REQUIRE(r["ops"].size() == expected.size());
  for (const auto& [kind, count] : expected) {
    INFO(kind);
    CHECK(r["ops"][kind]["count"] == count);
    CHECK(r["ops"][kind]["mean_ms"].get<double>() >= r["ops"][kind]["compute_ms"].get<double>());
  }
  CHECK(r["ops"]["F&B"]["compute_ms"].get<double>() == Approx(3.0));
  CHECK(r["simulated"]["makespan_ms"].get<double>() >= r["free_communication"]["makespan_ms"].get<double>());
  CHECK(r["simulated"]["bubble_ms"].size() == 2);
}
