#include "probe/overlap_probe.hpp"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <thread>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/model/gemm.hpp"
#include "probe/moe_traffic.hpp"

namespace ferry::tools::probe {
namespace {

using Clock = std::chrono::steady_clock;

// C = A · B, `count` times, on square fp32 matrices of `n`; the matrices are the caller's (no allocation in
// the timed loop).
class GemmLoop {
 public:
  explicit GemmLoop(int n) : n_(n), a_(square(n), 0.5f), b_(square(n), 0.25f), c_(square(n), 0.0f) {}

  double run(int count) {
    const auto start = Clock::now();
    for (int i = 0; i < count; ++i) {
      model::gemm<float>(false, false, n_, n_, n_, 1.0f, a_.data(), n_, b_.data(), n_, 0.0f, c_.data(), n_);
    }
    return seconds_since(start);
  }

 private:
  static std::size_t square(int n) { return static_cast<std::size_t>(n) * static_cast<std::size_t>(n); }
  int n_;
  std::vector<float> a_, b_, c_;
};

}  // namespace

nlohmann::json overlap_ratios(double comm_alone, double gemm_alone, double comm_together,
                              double gemm_together, double both) {
  const double shorter = std::min(comm_alone, gemm_alone);
  return {{"comm_slowdown", comm_alone > 0 ? comm_together / comm_alone : 0.0},
          {"gemm_slowdown", gemm_alone > 0 ? gemm_together / gemm_alone : 0.0},
          {"overlap", shorter > 0 ? (comm_alone + gemm_alone - both) / shorter : 0.0}};
}

nlohmann::json run_overlap_probe(Group& group, const OverlapOptions& options) {
  model::configure_blas_threads();  // one BLAS thread per rank: the ranks share the cores
  MoeTraffic traffic(group, options.comm);
  GemmLoop gemm(options.gemm_size);
  const int iters = options.comm.iters;
  for (int i = 0; i < options.comm.warmup; ++i) traffic.round_trip();
  gemm.run(1);

  const double comm_alone = traffic.time_round_trips(iters, "probe/overlap/comm") * iters;
  const double one_gemm = gemm.run(3) / 3;
  const int gemms = std::max(1, static_cast<int>(std::ceil(comm_alone / std::max(one_gemm, 1e-9))));
  group.barrier("probe/overlap/gemm");
  const double gemm_alone = gemm.run(gemms);

  group.barrier("probe/overlap/both");
  double gemm_together = 0;
  const auto start = Clock::now();
  std::thread compute([&] { gemm_together = gemm.run(gemms); });
  double comm_together = 0;
  try {
    comm_together = traffic.time_round_trips(iters, "probe/overlap/both_comm") * iters;
  } catch (...) {
    compute.join();
    throw;
  }
  compute.join();
  const double both = seconds_since(start);

  nlohmann::json mine = {{"rank", group.rank()},
                         {"comm_alone_s", comm_alone},
                         {"gemm_alone_s", gemm_alone},
                         {"comm_together_s", comm_together},
                         {"gemm_together_s", gemm_together},
                         {"both_s", both},
                         {"gemms", gemms}};
  mine.update(overlap_ratios(comm_alone, gemm_alone, comm_together, gemm_together, both));
  const std::string text = mine.dump();
  auto all = group.all_gather("probe/overlap/report",
                              {reinterpret_cast<const std::uint8_t*>(text.data()), text.size()});
  nlohmann::json ranks = nlohmann::json::array();
  nlohmann::json mean = nlohmann::json::object();
  for (const auto& blob : all) {
    auto rank = nlohmann::json::parse(blob.begin(), blob.end());
    for (const auto& [key, value] : rank.items()) {
      if (key == "rank") continue;
      mean[key] = mean.value(key, 0.0) + value.get<double>() / static_cast<double>(all.size());
    }
    ranks.push_back(rank);
  }
  // The mean's ratios from the mean times (a mean of ratios would weigh a fast rank like a slow one).
  mean.update(overlap_ratios(mean["comm_alone_s"], mean["gemm_alone_s"], mean["comm_together_s"],
                             mean["gemm_together_s"], mean["both_s"]));
  return {{"probe", "overlap"},   {"gemm_size", options.gemm_size},
          {"round_trips", iters}, {"num_sms", options.comm.num_sms},
          {"ranks", ranks},       {"mean", mean}};
}

std::string format_overlap_report(const nlohmann::json& report) {
  std::string out;
  char line[256];
  std::snprintf(line, sizeof line,
                "compute: SGEMM %d^3 loop on a thread of each rank; communication: %d dispatch+combine round "
                "trips, num_sms %d\n",
                report["gemm_size"].get<int>(), report["round_trips"].get<int>(),
                report["num_sms"].get<int>());
  out += line;
  std::snprintf(line, sizeof line, "%6s %10s %10s %12s %12s %10s %10s %10s %9s\n", "rank", "comm ms",
                "gemm ms", "comm+gemm ms", "(sum alone)", "comm x", "gemm x", "overlap", "gemms");
  out += line;
  auto row = [&](const std::string& name, const nlohmann::json& r) {
    std::snprintf(line, sizeof line, "%6s %10.2f %10.2f %12.2f %12.2f %10.2f %10.2f %9.0f%% %9.0f\n",
                  name.c_str(), r["comm_alone_s"].get<double>() * 1e3, r["gemm_alone_s"].get<double>() * 1e3,
                  r["both_s"].get<double>() * 1e3,
                  (r["comm_alone_s"].get<double>() + r["gemm_alone_s"].get<double>()) * 1e3,
                  r["comm_slowdown"].get<double>(), r["gemm_slowdown"].get<double>(),
                  100 * r["overlap"].get<double>(), r["gemms"].get<double>());
    out += line;
  };
  for (const auto& r : report["ranks"]) row(std::to_string(r["rank"].get<int>()), r);
  row("mean", report["mean"]);
  const auto& m = report["mean"];
  std::snprintf(
      line, sizeof line,
      "together, communication took %.2fx its time alone and the GEMMs %.2fx; %.0f%% of the shorter "
      "one was hidden (100%%: perfect overlap, 0%%: serial)\n",
      m["comm_slowdown"].get<double>(), m["gemm_slowdown"].get<double>(), 100 * m["overlap"].get<double>());
  out += line;
  return out;
}

}  // namespace ferry::tools::probe
