// The probes' logic without a job: the all-pairs schedule, the slow-link verdict, the heatmap, list parsing.
#include <catch2/catch.hpp>
#include <set>

#include <cstdio>

#include "bench/dispatch_sweep.hpp"
#include "bench/progress.hpp"
#include "cli/lists.hpp"
#include "ferry/core/error.hpp"
#include "probe/link_matrix.hpp"
#include "probe/pair_schedule.hpp"
#include "svg_check.hpp"

using namespace ferry::tools;

namespace {

// A full matrix over n endpoints where link (i, j) runs at rate(i, j).
template <typename Rate>
probe::LinkMatrix matrix_of(int n, Rate rate) {
  probe::LinkMatrix m;
  m.level = "node";
  for (int i = 0; i < n; ++i)
    m.endpoints.push_back({i * 2, i, "node" + std::to_string(i), "10.0.0." + std::to_string(i + 1)});
  for (int i = 0; i < n; ++i) {
    for (int j = 0; j < n; ++j) {
      if (i == j) continue;
      probe::Link l;
      l.from = i;
      l.to = j;
      l.gbps = rate(i, j);
      l.bytes = 1 << 20;
      l.puts = 1;
      l.latency_us = 10;
      m.links.push_back(l);
    }
  }
  return m;
}

// A node's link rate is the slower end's.
auto node_rates(std::vector<double> rates) {
  return [rates](int i, int j) {
    return std::min(rates[static_cast<std::size_t>(i)], rates[static_cast<std::size_t>(j)]);
  };
}

}  // namespace

TEST_CASE("round robin: every pair exactly once, each endpoint in at most one pair per round", "[probe]") {
  for (int n = 2; n <= 17; ++n) {
    INFO("n = " << n);
    const auto rounds = probe::round_robin_rounds(n);
    CHECK(rounds.size() == static_cast<std::size_t>(n % 2 == 0 ? n - 1 : n));
    std::set<std::pair<int, int>> met;
    for (const auto& round : rounds) {
      std::set<int> busy;
      for (const auto& [a, b] : round) {
        CHECK(a < b);
        CHECK(a >= 0);
        CHECK(b < n);
        CHECK(busy.insert(a).second);
        CHECK(busy.insert(b).second);
        CHECK(met.insert({a, b}).second);
      }
      CHECK(round.size() == static_cast<std::size_t>(n / 2));
    }
    CHECK(met.size() == static_cast<std::size_t>(n * (n - 1) / 2));
  }
  CHECK_THROWS_AS(probe::round_robin_rounds(1), ferry::Error);
}

TEST_CASE("verdict: one slow node of three is named, although most links touch it", "[probe]") {
  const auto m = matrix_of(3, node_rates({1.25, 1.25, 0.125}));
  const auto f = probe::analyze(m, 0.8);
  CHECK(f.median_link_gbps == Approx(0.125));  // why the median of all links is no reference
  CHECK(f.reference_gbps == Approx(1.25));
  CHECK(f.slow_endpoints == std::vector<int>{2});
  REQUIRE(f.slow_links.size() == 4);
  for (int index : f.slow_links) {
    const auto& l = m.links[static_cast<std::size_t>(index)];
    CHECK((l.from == 2 || l.to == 2));
  }
  const std::string text = probe::format_text(m, f);
  CHECK_THAT(text, Catch::Contains("SLOW NODE node 2 (node2, 10.0.0.3)"));
  CHECK_THAT(text, Catch::Contains("SLOW LINK node 2 (node2, 10.0.0.3) -> node 0 (node0, 10.0.0.1)"));
}

TEST_CASE("verdict: a bad cable names its link only, a healthy cluster nothing", "[probe]") {
  auto m = matrix_of(4, [](int i, int j) { return (i == 1 && j == 3) ? 0.3 : 1.0 + 0.01 * (i + j); });
  auto f = probe::analyze(m, 0.8);
  REQUIRE(f.slow_links.size() == 1);
  CHECK(m.links[static_cast<std::size_t>(f.slow_links[0])].from == 1);
  CHECK(m.links[static_cast<std::size_t>(f.slow_links[0])].to == 3);
  CHECK(f.slow_endpoints.empty());

  m = matrix_of(4, [](int i, int j) { return 1.0 + 0.01 * (i + j); });
  f = probe::analyze(m, 0.8);
  CHECK(f.slow_links.empty());
  CHECK(f.slow_endpoints.empty());
  CHECK_THAT(probe::format_text(m, f), Catch::Contains("no slow link"));
  CHECK_THROWS_AS(probe::analyze(m, 0.0), ferry::Error);
  CHECK_THROWS_AS(probe::analyze(m, 1.5), ferry::Error);
}

TEST_CASE("verdict: JSON matrices are [from][to] with null diagonals", "[probe]") {
  const auto m = matrix_of(3, [](int i, int j) { return 1.0 + i * 0.1 + j * 0.01; });
  const auto j = probe::to_json(m, probe::analyze(m, 0.8));
  CHECK(j["gbps"][0][0].is_null());
  CHECK(j["gbps"][1][2].get<double>() == Approx(1.12));
  CHECK(j["links"].size() == 6);
  CHECK(probe::link_from_json(j["links"][3]).gbps == m.links[3].gbps);
}

TEST_CASE("heatmap: well-formed SVG with one cell per link, the slow ones marked", "[probe]") {
  const auto m = matrix_of(4, node_rates({1.0, 1.0, 1.0, 0.1}));
  const auto f = probe::analyze(m, 0.8);
  const auto svg = ferry::test::parse_svg(probe::heatmap_svg(m, f, "a <title> & more"));
  REQUIRE(svg.error.empty());
  CHECK(svg.find("rect", "cell").size() == 12);
  const auto slow = svg.find("rect", "slow");
  CHECK(slow.size() == 6);
  for (const auto& cell : slow) {
    CHECK((cell.attributes.at("data-from") == "3" || cell.attributes.at("data-to") == "3"));
  }
  CHECK(svg.find("title").size() == 1);
  CHECK(ferry::test::parse_svg("<svg><g></svg>").error.size() > 0);
}

TEST_CASE("comma lists: strict positive numbers, errors name the item", "[probe]") {
  CHECK(cli::parse_int_list("8,16,24", "--x") == std::vector<int>{8, 16, 24});
  CHECK(cli::parse_number_list("10,10,0.5", "--x") == std::vector<double>{10, 10, 0.5});
  for (const char* bad : {"", "8,", ",8", "8,,16", "a", "8x", "0", "-4", "8, 16"}) {
    INFO(bad);
    CHECK_THROWS_WITH(cli::parse_int_list(bad, "--x"), Catch::Contains("--x"));
  }
  CHECK_THROWS_WITH(cli::parse_number_list("10,x", "--link-gbps"), Catch::Contains("'x'"));
  CHECK_THROWS_AS(cli::parse_number_list("nan", "--x"), ferry::Error);
}

namespace {

// A measured sweep point as DispatchBenchJob::measure() reports it (the fields the sweep reads).
nlohmann::json point(int sms, int rdma, double ms, double rdma_gbps, const char* check = "passed") {
  ferry::Config config;
  config.num_sms = sms;
  config.rdma_chunk = rdma;
  return {{"config", nlohmann::json::parse(config.to_json())},
          {"time_us", {{"mean", ms * 1e3}}},
          {"latency_us", {{"p50", ms * 1e3}, {"p90", ms * 1e3}, {"p99", ms * 1e3}}},
          {"deepep", {{"rdma_gbps", rdma_gbps}, {"nvl_gbps", 2 * rdma_gbps}}},
          {"check", check}};
}

std::string file_text(std::FILE* file) {
  std::rewind(file);
  std::string text;
  for (int c; (c = std::fgetc(file)) != EOF;) text += static_cast<char>(c);
  return text;
}

}  // namespace

TEST_CASE("sweep: every combination in order, invalid ones explained, the fastest passing point is best",
          "[probe]") {
  ferry::Config base;
  base.max_hidden = 256;
  const auto configs = ferry::bench::sweep_configs(base, {{4, 8}, {8, 64}, {4}});
  REQUIRE(configs.size() == 4);
  CHECK(configs[1].num_sms == 4);
  CHECK(configs[1].rdma_chunk == 64);
  CHECK(configs[2].num_sms == 8);
  CHECK(configs[2].max_hidden == 256);
  CHECK(ferry::bench::config_problem(configs[0], 2, 2).empty());
  CHECK_THAT(ferry::bench::config_problem(configs[1], 2, 2), Catch::StartsWith("Config::rdma_chunk = 64"));

  ferry::bench::SweepArgs args;
  args.sms = "4,7";
  CHECK_THROWS_WITH(ferry::bench::parse_sweep_grid(args),
                    Catch::Contains("must be even (a channel is 2 SMs) and at most 1024, not 7"));
  args.sms = "2048";
  CHECK_THROWS_WITH(ferry::bench::parse_sweep_grid(args), Catch::Contains("not 2048"));
  args.sms = "4";
  args.rdma_chunks = "70000";
  CHECK_THROWS_WITH(ferry::bench::parse_sweep_grid(args),
                    Catch::Contains("--sweep-rdma-chunk: 70000 is above 65536"));
  // Each point builds a Buffer and runs the benchmark: a grid of 17 x 16 x 16 = 4352 points is refused.
  std::string many;
  for (int i = 1; i <= 17; ++i) many += (i > 1 ? "," : "") + std::to_string(2 * i);
  args.sms = many;
  args.rdma_chunks = args.nvl_chunks = "1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16";
  CHECK_THROWS_WITH(ferry::bench::parse_sweep_grid(args), Catch::Contains("= 4352 points, more than 4096"));

  nlohmann::json points = nlohmann::json::array();
  points.push_back(point(4, 8, 3.0, 1.0));
  points.push_back(
      nlohmann::json{{"config", nlohmann::json::parse(configs[1].to_json())}, {"skipped", "too big"}});
  points.push_back(point(8, 8, 1.0, 3.0, "failed"));  // fastest, but wrong
  points.push_back(point(8, 16, 2.0, 2.0));
  const auto report = ferry::bench::sweep_report("dispatch", points);
  CHECK(report["best_index"] == 3);
  const std::string table = ferry::bench::format_sweep_table(report);
  CHECK_THAT(table, Catch::Contains("skipped: too big") && Catch::Contains("CHECK FAILED"));
  CHECK_THAT(table.substr(table.rfind("best:")), Catch::StartsWith("best: num_sms 8, rdma_chunk 16"));
  CHECK(table.back() == '\n');
  CHECK(ferry::bench::format_sweep_point(points[1], 1, 4) ==
        "[2/4] num_sms 4, rdma_chunk 64, nvl_chunk 4: skipped: too big");

  const auto svg = ferry::test::parse_svg(ferry::bench::sweep_plot(report, true).str());
  REQUIRE(svg.error.empty());
  CHECK(svg.find("circle", "point").size() == 3);  // the skipped point is not drawn
  CHECK(svg.find("polyline", "series").size() == 2);
  REQUIRE(svg.find("circle", "best").size() == 1);

  CHECK_FALSE(
      ferry::bench::sweep_report("combine", nlohmann::json::array({points[1], points[2]})).contains("best"));
}

TEST_CASE("progress: a bar redrawn in place on a terminal, plain lines otherwise", "[probe]") {
  std::FILE* bar = std::tmpfile();
  std::FILE* lines = std::tmpfile();
  REQUIRE(bar != nullptr);
  REQUIRE(lines != nullptr);
  {
    ProgressBar progress(2, false, bar, lines);
    progress.step("one");
    progress.step("two");
  }
  CHECK(file_text(lines) == "one\ntwo\n");
  CHECK(file_text(bar).empty());
  {
    ProgressBar progress(4, true, bar, lines);
    progress.step("first point");
  }
  const std::string drawn = file_text(bar);
  CHECK_THAT(drawn, Catch::Contains("\r\033[K[#######.......................] 1/4 first point"));
  CHECK(drawn.substr(drawn.size() - 4) == "\r\033[K");  // cleared at the end
  CHECK(file_text(lines) == "one\ntwo\n");
  std::fclose(bar);
  std::fclose(lines);
}
