#include "bench/dispatch_sweep.hpp"

#include <cstdio>
#include <map>

#include "cli/lists.hpp"
#include "ferry/core/error.hpp"
#include "plot/line_chart.hpp"

namespace ferry::bench {
namespace {

std::string chunk_name(const nlohmann::json& config) {
  return "rdma_chunk " + std::to_string(config["rdma_chunk"].get<int>()) + ", nvl_chunk " +
         std::to_string(config["nvl_chunk"].get<int>());
}

bool ran(const nlohmann::json& point) {
  return !point.contains("skipped");
}

}  // namespace

SweepGrid parse_sweep_grid(const SweepArgs& args) {
  SweepGrid grid{tools::cli::parse_int_list(args.sms, "--sweep-sms"),
                 tools::cli::parse_int_list(args.rdma_chunks, "--sweep-rdma-chunk"),
                 tools::cli::parse_int_list(args.nvl_chunks, "--sweep-nvl-chunk")};
  for (int sms : grid.sms) {
    if (sms % 2 != 0 || sms > kMaxSms) {
      fail(Errc::invalid_argument, "--sweep-sms: num_sms must be even (a channel is 2 SMs) and at most " +
                                       std::to_string(kMaxSms) + ", not " + std::to_string(sms));
    }
  }
  for (const auto& [flag, list] : {std::pair{"--sweep-rdma-chunk", &grid.rdma_chunks},
                                   std::pair{"--sweep-nvl-chunk", &grid.nvl_chunks}}) {
    for (int chunk : *list)
      if (chunk > kMaxRingSetting)
        fail(Errc::invalid_argument, std::string(flag) + ": " + std::to_string(chunk) + " is above " +
                                         std::to_string(kMaxRingSetting));
  }
  const std::size_t points = grid.sms.size() * grid.rdma_chunks.size() * grid.nvl_chunks.size();
  if (points > kMaxSweepPoints)
    fail(Errc::invalid_argument,
         "--sweep-sms x --sweep-rdma-chunk x --sweep-nvl-chunk: " + std::to_string(grid.sms.size()) + " x " +
             std::to_string(grid.rdma_chunks.size()) + " x " + std::to_string(grid.nvl_chunks.size()) +
             " = " + std::to_string(points) + " points, more than " + std::to_string(kMaxSweepPoints));
  return grid;
}

std::vector<Config> sweep_configs(const Config& base, const SweepGrid& grid) {
  std::vector<Config> configs;
  for (int sms : grid.sms) {
    for (int rdma : grid.rdma_chunks) {
      for (int nvl : grid.nvl_chunks) {
        Config config = base;
        config.num_sms = sms;
        config.rdma_chunk = rdma;
        config.nvl_chunk = nvl;
        configs.push_back(config);
      }
    }
  }
  return configs;
}

std::string config_problem(const Config& config, int num_nodes, int local_size) {
  try {
    config.validate(num_nodes, local_size);
    return {};
  } catch (const Error& e) {
    std::string text = e.what();
    const std::string head = "ferry: " + std::string(to_string(e.code())) + ": ";
    if (text.rfind(head, 0) == 0) text.erase(0, head.size());
    return text;
  }
}

std::string format_sweep_point(const nlohmann::json& point, std::size_t index, std::size_t total) {
  const auto& c = point["config"];
  char line[256];
  const int n = std::snprintf(line, sizeof line, "[%zu/%zu] num_sms %d, %s: ", index + 1, total,
                              c["num_sms"].get<int>(), chunk_name(c).c_str());
  std::string out(line, static_cast<std::size_t>(std::max(n, 0)));
  if (!ran(point)) return out + "skipped: " + point["skipped"].get<std::string>();
  std::snprintf(line, sizeof line, "%.3f ms, RDMA %.3f GB/s, NVL %.3f GB/s%s",
                point["time_us"]["mean"].get<double>() / 1e3, point["deepep"]["rdma_gbps"].get<double>(),
                point["deepep"]["nvl_gbps"].get<double>(),
                point["check"] == "failed" ? ", CHECK FAILED" : "");
  return out + line;
}

nlohmann::json sweep_report(const std::string& op, const nlohmann::json& points) {
  nlohmann::json report = {{"sweep", op}, {"points", points}};
  int best = -1;
  for (std::size_t i = 0; i < points.size(); ++i) {
    const auto& p = points[i];
    if (!ran(p) || p["check"] == "failed") continue;
    if (best < 0 || p["time_us"]["mean"].get<double>() <
                        points[static_cast<std::size_t>(best)]["time_us"]["mean"].get<double>()) {
      best = static_cast<int>(i);
    }
  }
  if (best >= 0) {
    report["best_index"] = best;
    report["best"] = points[static_cast<std::size_t>(best)];
  }
  return report;
}

std::string format_sweep_table(const nlohmann::json& report) {
  std::string out =
      "sweep of " + report["sweep"].get<std::string>() + ": " + std::to_string(report["points"].size()) +
      " configurations (GB/s per rank as DeepEP counts them; latency over every rank's iterations)\n";
  char line[256];
  std::snprintf(line, sizeof line, "%8s %10s %9s %10s %10s %10s %10s %10s %10s\n", "num_sms", "rdma_chunk",
                "nvl_chunk", "mean ms", "p50 ms", "p90 ms", "p99 ms", "RDMA GB/s", "NVL GB/s");
  out += line;
  for (const auto& p : report["points"]) {
    const auto& c = p["config"];
    if (!ran(p)) {
      std::snprintf(line, sizeof line, "%8d %10d %9d  skipped: ", c["num_sms"].get<int>(),
                    c["rdma_chunk"].get<int>(), c["nvl_chunk"].get<int>());
      out += line + p["skipped"].get<std::string>() + "\n";
      continue;
    }
    const auto& l = p["latency_us"];
    std::snprintf(line, sizeof line, "%8d %10d %9d %10.3f %10.3f %10.3f %10.3f %10.3f %10.3f%s\n",
                  c["num_sms"].get<int>(), c["rdma_chunk"].get<int>(), c["nvl_chunk"].get<int>(),
                  p["time_us"]["mean"].get<double>() / 1e3, l["p50"].get<double>() / 1e3,
                  l["p90"].get<double>() / 1e3, l["p99"].get<double>() / 1e3,
                  p["deepep"]["rdma_gbps"].get<double>(), p["deepep"]["nvl_gbps"].get<double>(),
                  p["check"] == "failed" ? "  CHECK FAILED" : "");
    out += line;
  }
  if (!report.contains("best")) return out + "best: none (no configuration ran and passed)\n";
  const auto& b = report["best"];
  std::snprintf(
      line, sizeof line,
      "best: num_sms %d, rdma_chunk %d, nvl_chunk %d: %.3f ms per %s, RDMA %.3f GB/s, NVL %.3f GB/s\n",
      b["config"]["num_sms"].get<int>(), b["config"]["rdma_chunk"].get<int>(),
      b["config"]["nvl_chunk"].get<int>(), b["time_us"]["mean"].get<double>() / 1e3,
      report["sweep"].get<std::string>().c_str(), b["deepep"]["rdma_gbps"].get<double>(),
      b["deepep"]["nvl_gbps"].get<double>());
  return out + line;
}

tools::plot::SvgDocument sweep_plot(const nlohmann::json& report, bool internode) {
  const char* key = internode ? "rdma_gbps" : "nvl_gbps";
  std::map<std::string, tools::plot::Series> by_chunks;
  std::vector<std::string> order;
  for (const auto& p : report["points"]) {
    if (!ran(p)) continue;
    const std::string name = chunk_name(p["config"]);
    if (!by_chunks.count(name)) {
      order.push_back(name);
      by_chunks[name].name = name;
    }
    by_chunks[name].points.emplace_back(p["config"]["num_sms"].get<double>(), p["deepep"][key].get<double>());
  }
  std::vector<tools::plot::Series> series;
  for (const auto& name : order) series.push_back(by_chunks[name]);
  tools::plot::ChartOptions options;
  options.title = "ferry bench " + report["sweep"].get<std::string>() +
                  " --sweep: " + (internode ? "RDMA" : "NVL") + " GB/s per rank against num_sms";
  options.x_label = "num_sms (channels = num_sms / 2)";
  options.y_label = std::string(internode ? "RDMA" : "NVL") + " GB/s per rank (DeepEP's count)";
  if (report.contains("best")) {
    const auto& b = report["best"];
    options.highlight = std::pair(b["config"]["num_sms"].get<double>(), b["deepep"][key].get<double>());
    options.highlight_label = "best: num_sms " + std::to_string(b["config"]["num_sms"].get<int>()) +
                              ", chunks " + std::to_string(b["config"]["rdma_chunk"].get<int>()) + "/" +
                              std::to_string(b["config"]["nvl_chunk"].get<int>());
  }
  return tools::plot::line_chart(series, options);
}

}  // namespace ferry::bench
