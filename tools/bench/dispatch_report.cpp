// Dispatch/combine benchmark report: see dispatch_report.hpp.
#include "bench/dispatch_report.hpp"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <stdexcept>

namespace ferry::bench {
namespace {

nlohmann::json path_json(const PathCount& path) {
  return {{"rows", path.rows}, {"wire_bytes", path.wire_bytes}};
}

// The q-quantile (0..1) of sorted values, nearest rank.
double quantile(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) return 0;
  const auto index = static_cast<std::size_t>(std::ceil(q * static_cast<double>(sorted.size())));
  return sorted[std::min(sorted.size() - 1, index == 0 ? 0 : index - 1)];
}

// Bytes per iteration over all ranks -> GB/s of one rank (the mean rank's share over the mean time).
double per_rank_gbps(double total_bytes, int num_ranks, double seconds) {
  return seconds > 0 ? total_bytes / num_ranks / seconds / 1e9 : 0.0;
}

}  // namespace

nlohmann::json to_json(const RankMeasurement& m) {
  return {{"rank", m.rank},
          {"node", m.node},
          {"seconds_per_iter", m.seconds_per_iter},
          {"fabric", path_json(m.fabric)},
          {"node_path", path_json(m.node_path)},
          {"self", path_json(m.self)},
          {"recv_rows", m.recv_rows},
          {"fabric_puts", m.fabric_puts},
          {"fabric_signals", m.fabric_signals},
          {"predicted_fabric_rows", m.predicted_fabric_rows},
          {"deepep_rdma_rows", m.deepep_rdma_rows},
          {"check_error", m.check_error},
          {"iteration_us", [&] {
             nlohmann::json us = nlohmann::json::array();
             for (double s : m.iteration_seconds) us.push_back(s * 1e6);
             return us;
           }()}};
}

void count_routing_rows(const RoutingSpec& spec, const Routing& routing, int rank,
                        RankMeasurement& measurement) {
  const int own_node = rank / spec.local_size;
  const std::int64_t per_node = spec.experts_per_node();
  measurement.predicted_fabric_rows = 0;
  measurement.deepep_rdma_rows = 0;
  for (std::int64_t t = 0; t < routing.num_tokens; ++t) {
    const std::int64_t* experts = &routing.topk_idx[t * routing.topk];
    const int nodes = distinct_nodes(spec, experts);
    bool touches_own = false;
    for (int k = 0; k < routing.topk; ++k)
      touches_own |= experts[k] >= 0 && experts[k] / per_node == own_node;
    measurement.deepep_rdma_rows += nodes;
    measurement.predicted_fabric_rows += nodes - (touches_own ? 1 : 0);
  }
}

nlohmann::json summarize(const BenchHeader& header, const std::vector<nlohmann::json>& ranks) {
  const DispatchBenchOptions& o = header.options;
  const int R = static_cast<int>(ranks.size());
  nlohmann::json s;
  s["tool"] = header.tool;
  s["op"] = header.op;
  s["ranks"] = R;
  s["nodes"] = header.num_ranks / header.local_size;
  s["local_size"] = header.local_size;
  s["tokens"] = o.tokens;
  s["hidden"] = o.hidden;
  s["topk"] = o.topk;
  s["experts"] = o.experts;
  s["max_nodes"] = o.max_nodes;
  s["num_sms"] = o.num_sms;
  s["dtype"] = header.op == "combine" ? "bf16" : (o.fp8 ? "fp8_e4m3" : "bf16");
  s["fp8"] = o.fp8;
  s["iters"] = o.iters;
  s["warmup"] = o.warmup;
  s["seed"] = o.seed;
  s["skew"] = o.skew;
  s["row_bytes"] = header.row_bytes;

  double sum = 0, lo = 1e300, hi = 0;
  for (const auto& r : ranks) {
    const double t = r["seconds_per_iter"].get<double>();
    sum += t;
    lo = std::min(lo, t);
    hi = std::max(hi, t);
  }
  const double mean = R > 0 ? sum / R : 0;
  s["time_us"] = {{"mean", mean * 1e6}, {"min", lo * 1e6}, {"max", hi * 1e6}};
  std::vector<double> iterations;
  for (const auto& r : ranks) {
    for (const auto& us : r.value("iteration_us", nlohmann::json::array()))
      iterations.push_back(us.get<double>());
  }
  if (!iterations.empty()) {
    std::sort(iterations.begin(), iterations.end());
    s["latency_us"] = {{"p50", quantile(iterations, 0.5)},
                       {"p90", quantile(iterations, 0.9)},
                       {"p99", quantile(iterations, 0.99)},
                       {"max", iterations.back()},
                       {"samples", iterations.size()}};
  }

  const double row = static_cast<double>(header.row_bytes);
  nlohmann::json paths;
  for (const char* name : {"fabric", "node_path", "self"}) {
    double rows = 0, wire = 0;
    for (const auto& r : ranks) {
      rows += r[name]["rows"].get<double>();
      wire += r[name]["wire_bytes"].get<double>();
    }
    paths[name == std::string("node_path") ? "node" : name] = {
        {"rows_per_iter", rows},
        {"row_bytes_per_iter", rows * row},
        {"wire_bytes_per_iter", wire},
        {"gbps_per_rank", per_rank_gbps(rows * row, R, mean)},
        {"wire_gbps_per_rank", per_rank_gbps(wire, R, mean)}};
  }
  s["paths"] = paths;

  double recv_rows = 0, rdma_rows = 0, predicted = 0;
  nlohmann::json errors = nlohmann::json::array();
  for (const auto& r : ranks) {
    recv_rows += r["recv_rows"].get<double>();
    rdma_rows += r["deepep_rdma_rows"].get<double>();
    predicted += r["predicted_fabric_rows"].get<double>();
    if (!r["check_error"].get<std::string>().empty()) errors.push_back(r["check_error"]);
  }
  double puts = 0, signals = 0;
  for (const auto& r : ranks) {
    puts += r.value("fabric_puts", 0.0);
    signals += r.value("fabric_signals", 0.0);
  }
  const double fabric_rows = paths["fabric"]["rows_per_iter"].get<double>();
  s["fabric_ops"] = {{"puts_per_iter", puts},
                     {"signals_per_iter", signals},
                     {"per_row", fabric_rows > 0 ? (puts + signals) / fabric_rows : 0.0}};
  s["deepep"] = {{"rdma_rows_per_iter", rdma_rows},
                 {"nvl_rows_per_iter", recv_rows},
                 {"rdma_gbps", per_rank_gbps(rdma_rows * row, R, mean)},
                 {"nvl_gbps", per_rank_gbps(recv_rows * row, R, mean)}};
  const double measured = paths["fabric"]["rows_per_iter"].get<double>();
  s["fabric_rule"] = {{"measured_rows", measured},
                      {"predicted_rows", predicted},
                      {"measured_bytes", measured * row},
                      {"predicted_bytes", predicted * row},
                      {"ratio", predicted > 0 ? measured / predicted : 0.0},
                      {"within", measured <= predicted}};
  s["check"] = !o.check ? "not run" : errors.empty() ? "passed" : "failed";
  s["errors"] = errors;
  s["per_rank"] = ranks;
  return s;
}

void print_summary(const nlohmann::json& s) {
  std::printf(
      "%s %s: %d ranks (%d nodes x %d), %lld tokens/rank, hidden %lld, topk %d, %lld experts, %s "
      "(%zu B/row), %d iters after %d warmup, skew %g, seed %llu\n",
      s["tool"].get<std::string>().c_str(), s["op"].get<std::string>().c_str(), s["ranks"].get<int>(),
      s["nodes"].get<int>(), s["local_size"].get<int>(), s["tokens"].get<long long>(),
      s["hidden"].get<long long>(), s["topk"].get<int>(), s["experts"].get<long long>(),
      s["dtype"].get<std::string>().c_str(), s["row_bytes"].get<std::size_t>(), s["iters"].get<int>(),
      s["warmup"].get<int>(), s["skew"].get<double>(), s["seed"].get<unsigned long long>());
  const auto& t = s["time_us"];
  std::printf("  time per %s: mean %.3f ms, min %.3f, max %.3f (per-rank averages)\n",
              s["op"].get<std::string>().c_str(), t["mean"].get<double>() / 1e3, t["min"].get<double>() / 1e3,
              t["max"].get<double>() / 1e3);
  if (s.contains("latency_us")) {
    const auto& l = s["latency_us"];
    std::printf("  latency per %s over %zu rank-iterations: p50 %.3f ms, p90 %.3f, p99 %.3f, max %.3f\n",
                s["op"].get<std::string>().c_str(), l["samples"].get<std::size_t>(),
                l["p50"].get<double>() / 1e3, l["p90"].get<double>() / 1e3, l["p99"].get<double>() / 1e3,
                l["max"].get<double>() / 1e3);
  }
  std::printf("  %-7s %14s %16s %14s %16s\n", "path", "rows/iter", "row MB/iter", "row GB/s/rank",
              "wire GB/s/rank");
  for (const char* name : {"fabric", "node", "self"}) {
    const auto& p = s["paths"][name];
    std::printf("  %-7s %14.0f %16.2f %14.3f %16.3f\n", name, p["rows_per_iter"].get<double>(),
                p["row_bytes_per_iter"].get<double>() / 1e6, p["gbps_per_rank"].get<double>(),
                p["wire_gbps_per_rank"].get<double>());
  }
  const auto& d = s["deepep"];
  std::printf("  DeepEP-style per rank: RDMA %.3f GB/s (%.0f rows/iter), NVL %.3f GB/s (%.0f rows/iter)\n",
              d["rdma_gbps"].get<double>(), d["rdma_rows_per_iter"].get<double>(),
              d["nvl_gbps"].get<double>(), d["nvl_rows_per_iter"].get<double>());
  const auto& ops = s["fabric_ops"];
  if (ops["puts_per_iter"].get<double>() + ops["signals_per_iter"].get<double>() > 0) {
    std::printf("  fabric operations: %.0f puts + %.0f signals per iter = %.3f per fabric row\n",
                ops["puts_per_iter"].get<double>(), ops["signals_per_iter"].get<double>(),
                ops["per_row"].get<double>());
  }
  const auto& f = s["fabric_rule"];
  std::printf("  fabric rows %.0f (%.2f MB) vs one-crossing-per-node rule %.0f (%.2f MB): x%.3f\n",
              f["measured_rows"].get<double>(), f["measured_bytes"].get<double>() / 1e6,
              f["predicted_rows"].get<double>(), f["predicted_bytes"].get<double>() / 1e6,
              f["ratio"].get<double>());
  std::printf("  check: %s\n", s["check"].get<std::string>().c_str());
  for (const auto& e : s["errors"]) std::printf("  error: %s\n", e.get<std::string>().c_str());
  std::fflush(stdout);
}

void write_json(const nlohmann::json& summary, const std::string& path) {
  std::ofstream out(path);
  out << summary.dump(2) << "\n";
  if (!out) throw std::runtime_error("cannot write the JSON report " + path);
  std::printf("wrote %s\n", path.c_str());
}

}  // namespace ferry::bench
