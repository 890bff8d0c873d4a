// `ferry bench dispatch|combine --sweep`: the same routing through Buffers of several Configs, as DeepEP's
// tuning loops do (num_sms, then the chunk sizes of the fabric and node rings), the best printed last and
// written as a Config file the runtime loads (ferry::Config::load).
//
// The best point is the one with the lowest mean time per operation among those that ran (and passed their
// check, with --check). Points whose Config is invalid for the job (a chunk larger than its ring) are listed
// as skipped with the reason.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/dispatch_options.hpp"
#include "ferry/config.hpp"
#include "plot/svg.hpp"

namespace ferry::bench {

struct SweepArgs {
  bool enabled = false;
  std::string sms = "4,8,16,24";
  std::string rdma_chunks = "8,16";
  std::string nvl_chunks = "4,8";
  std::string save_config;
  std::string plot;
};

struct SweepGrid {
  std::vector<int> sms;
  std::vector<int> rdma_chunks;
  std::vector<int> nvl_chunks;
};

// The most points one sweep runs (each builds a Buffer and runs the benchmark).
inline constexpr std::size_t kMaxSweepPoints = 4096;

// Throws Errc::invalid_argument naming the option and item (num_sms even and at most kMaxSms, chunks at most
// kMaxRingSetting, at most kMaxSweepPoints combinations).
SweepGrid parse_sweep_grid(const SweepArgs& args);

// Every combination, num_sms outermost, then rdma_chunk, then nvl_chunk; other fields from `base`.
std::vector<Config> sweep_configs(const Config& base, const SweepGrid& grid);

// Why `config` cannot run on num_nodes x local_size ranks (Config::validate's message), or "".
std::string config_problem(const Config& config, int num_nodes, int local_size);

// One line for a finished point: "[3/16] num_sms 8, rdma_chunk 16, nvl_chunk 4: 1.234 ms, RDMA 2.1 GB/s".
std::string format_sweep_point(const nlohmann::json& point, std::size_t index, std::size_t total);

// {"sweep": op, "points": [...], "best_index", "best"} (no best when nothing ran).
nlohmann::json sweep_report(const std::string& op, const nlohmann::json& points);

// The table of every point, then the best one last.
std::string format_sweep_table(const nlohmann::json& report);

// DeepEP's bandwidth of the path that matters (RDMA across nodes, NVL within one) against num_sms, one line
// per (rdma_chunk, nvl_chunk), the best point circled.
tools::plot::SvgDocument sweep_plot(const nlohmann::json& report, bool internode);

}  // namespace ferry::bench
