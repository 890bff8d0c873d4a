// `ferry bench low-latency` (low_latency_bench.hpp).
//
// Every timed iteration runs, on every rank and in this order: a normal dispatch and combine (Buffer, the
// layout computed once outside the timing), a low-latency dispatch and combine as plain calls (the whole
// call: send, wait, receive), and the same with return_recv_hook (the issue-only call, then the hook).
// Interleaving them spreads whatever else the machine does evenly over the modes. Each call is timed on its
// own on every rank; rank 0 reports percentiles over all ranks' iterations (what one rank waits for one
// call).
#include "bench/low_latency_bench.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "bench/dispatch_inputs.hpp"
#include "bench/dispatch_options.hpp"
#include "bench/machine_info.hpp"
#include "bench/percentile.hpp"
#include "bench/routing_gen.hpp"
#include "cli/usage.hpp"
#include "ferry/buffer.hpp"
#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/low_latency.hpp"

namespace ferry::tools {
namespace {

struct LowLatencyBenchOptions {
  bench::DispatchBenchOptions base;  // routing, sizes, normal mode's settings, iterations
  bool bf16 = false;                 // dispatch bf16 rows instead of fp8 (both modes)
  bool round_scale = false;
  bool ue8m0 = false;
  bool no_normal = false;
  bool zero_copy = false;  // combine from the staging (filled untimed, as an expert GEMM would write it)
};

// The calls timed, in the report's order.
enum Series {
  normal_dispatch,
  normal_combine,
  ll_dispatch,
  ll_combine,
  hook_dispatch_issue,
  hook_dispatch_receive,
  hook_combine_issue,
  hook_combine_receive,
  kSeries
};
const char* const kSeriesNames[kSeries] = {
    "normal dispatch",      "normal combine",         "low-latency dispatch", "low-latency combine",
    "hook: dispatch issue", "hook: dispatch receive", "hook: combine issue",  "hook: combine receive"};

double microseconds_since(Clock::time_point start) {
  return std::chrono::duration<double, std::micro>(Clock::now() - start).count();
}

class LowLatencyBenchJob {
 public:
  explicit LowLatencyBenchJob(const LowLatencyBenchOptions& o)
      : o_(o),
        timeout_(std::chrono::duration_cast<Duration>(std::chrono::duration<double>(o.base.timeout_s))),
        group_(make_group(timeout_)),
        spec_(bench::routing_spec(o.base, group_.world_size(), group_.local_size())) {
    bench::validate(spec_);
    bench::DispatchBenchOptions rows = o_.base;
    rows.fp8 = false;
    bench::make_inputs(rows, spec_, group_.rank(), bf16_);  // the low-latency mode casts bf16 rows itself
    if (!o_.bf16) {
      rows.fp8 = true;
      bench::make_inputs(rows, spec_, group_.rank(), fp8_);  // the normal mode takes them cast
    }
  }

  Group& group() { return group_; }

  // Collective. Every rank's times per series, gathered on every rank.
  std::vector<std::vector<double>> measure() {
    const std::int64_t T = o_.base.tokens, H = o_.base.hidden, E = o_.base.experts;
    const int R = group_.world_size();
    std::unique_ptr<Buffer> normal;
    std::optional<Layout> layout;
    if (!o_.no_normal) {
      normal = std::make_unique<Buffer>(group_, normal_config());
      layout = normal->get_layout(bf16_.view.topk_idx, E);
    }
    LowLatencyConfig config;
    config.num_rdma_bytes = get_low_latency_rdma_size_hint(T, H, R, E);
    config.timeout = timeout_;
    LowLatencyBuffer low_latency(group_, config);
    const std::int64_t L = E / R;
    // The experts' rows for combine: any bf16 values do; these are exact.
    Tensor y({L, R * T, H}, DType::bf16);
    std::fill_n(y.data_as<std::uint16_t>(), y.numel(), std::uint16_t{0x3f80});  // 1.0

    std::optional<Tensor> normal_rows;
    std::vector<std::vector<double>> mine(kSeries);
    auto timed = [&](Series series, bool keep, auto&& call) {
      const auto start = Clock::now();
      call();
      if (keep) mine[series].push_back(microseconds_since(start));
    };
    LowLatencyDispatchOptions dispatch_options;
    dispatch_options.use_fp8 = !o_.bf16;
    dispatch_options.round_scale = o_.round_scale;
    dispatch_options.use_ue8m0 = o_.ue8m0;
    const DispatchInputs& normal_inputs = o_.bf16 ? bf16_.view : fp8_.view;
    const TensorView x = bf16_.view.x;
    const TensorView topk = bf16_.view.topk_idx;
    const TensorView weights = bf16_.view.topk_weights;

    group_.barrier("bench/low-latency/start");
    const LowLatencyStats before = low_latency.low_latency_stats();
    for (int i = 0; i < o_.base.warmup + o_.base.iters; ++i) {
      const bool keep = i >= o_.base.warmup;
      if (normal) {
        std::optional<Pending<DispatchResult>> dispatched;
        timed(normal_dispatch, keep, [&] {
          dispatched.emplace(normal->dispatch(normal_inputs, *layout));
          dispatched->wait();
        });
        const DispatchResult& got = dispatched->wait();
        // The experts' rows: the same routing every iteration, so cast once (the cast would otherwise run
        // on the shared cores while the other ranks are inside timed calls).
        if (!normal_rows) normal_rows = o_.bf16 ? got.recv_x : bench::dequantized_rows(got, H);
        timed(normal_combine, keep, [&] { normal->combine(*normal_rows, got.handle).wait(); });
      }
      LowLatencyDispatchResult sent;
      LowLatencyCombineOptions combine_options;
      combine_options.zero_copy = o_.zero_copy;
      // The experts' rows: y, or with zero copy the staging, whose valid rows are written before the call as
      // a GEMM would write them.
      auto experts_rows = [&]() -> TensorView {
        if (!o_.zero_copy) return y;
        const TensorView staging = low_latency.get_next_low_latency_combine_buffer(sent.handle);
        const std::size_t expert_bytes = y.bytes() / static_cast<std::size_t>(L);
        const std::size_t row_bytes = static_cast<std::size_t>(H) * 2;
        for (std::int64_t e = 0; e < L; ++e) {
          const auto rows = static_cast<std::size_t>(sent.recv_count.data_as<std::int32_t>()[e]);
          std::memcpy(static_cast<std::byte*>(staging.data()) + e * expert_bytes,
                      static_cast<const std::byte*>(y.data()) + e * expert_bytes, rows * row_bytes);
        }
        return staging;
      };
      timed(ll_dispatch, keep,
            [&] { sent = low_latency.low_latency_dispatch(x, topk, T, E, dispatch_options); });
      TensorView rows = experts_rows();
      timed(ll_combine, keep,
            [&] { low_latency.low_latency_combine(rows, topk, weights, sent.handle, combine_options); });

      LowLatencyDispatchOptions hook_options = dispatch_options;
      hook_options.return_recv_hook = true;
      timed(hook_dispatch_issue, keep,
            [&] { sent = low_latency.low_latency_dispatch(x, topk, T, E, hook_options); });
      timed(hook_dispatch_receive, keep, [&] { sent.hook(); });
      LowLatencyCombineOptions combine_hook = combine_options;
      combine_hook.return_recv_hook = true;
      LowLatencyCombineResult back;
      rows = experts_rows();
      timed(hook_combine_issue, keep,
            [&] { back = low_latency.low_latency_combine(rows, topk, weights, sent.handle, combine_hook); });
      timed(hook_combine_receive, keep, [&] { back.hook(); });
    }
    group_.barrier("bench/low-latency/end");
    const LowLatencyStats after = low_latency.low_latency_stats();
    // Per low-latency call of this rank: every iteration makes two dispatches and two combines.
    const double calls = 4.0 * (o_.base.warmup + o_.base.iters);
    fabric_puts_ = static_cast<double>(after.fabric_puts - before.fabric_puts) / calls;
    fabric_signals_ = static_cast<double>(after.fabric_signals - before.fabric_signals) / calls;

    std::vector<std::vector<double>> all(kSeries);
    for (int s = 0; s < kSeries; ++s) {
      std::vector<std::uint8_t> bytes(mine[s].size() * sizeof(double));
      std::memcpy(bytes.data(), mine[s].data(), bytes.size());
      for (const auto& rank : group_.all_gather("bench/low-latency/" + std::to_string(s), bytes)) {
        const std::size_t count = rank.size() / sizeof(double);
        const std::size_t before = all[s].size();
        all[s].resize(before + count);
        std::memcpy(all[s].data() + before, rank.data(), rank.size());
      }
    }
    return all;
  }

  nlohmann::json report(const std::vector<std::vector<double>>& times) const {
    nlohmann::json report;
    report["tool"] = "ferry bench low-latency";
    report["date"] = now_iso8601();
    report["machine"] = machine_info();
    report["ranks"] = group_.world_size();
    report["nodes"] = group_.num_nodes();
    report["tokens"] = o_.base.tokens;
    report["hidden"] = o_.base.hidden;
    report["topk"] = o_.base.topk;
    report["experts"] = o_.base.experts;
    report["dispatch"] = o_.bf16          ? "bf16"
                         : o_.ue8m0       ? "fp8 (ue8m0 scales)"
                         : o_.round_scale ? "fp8 (pow2 scales)"
                                          : "fp8";
    report["combine"] = o_.zero_copy ? "bf16 (zero-copy)" : "bf16";
    report["iters"] = o_.base.iters;
    report["warmup"] = o_.base.warmup;
    for (int s = 0; s < kSeries; ++s) {
      if (times[s].empty()) continue;
      report["latency_us"][kSeriesNames[s]] = {{"p50", bench::percentile(times[s], 0.5)},
                                               {"p99", bench::percentile(times[s], 0.99)},
                                               {"samples", times[s].size()}};
    }
    auto p50 = [&](Series s) { return bench::percentile(times[s], 0.5); };
    const double ll = p50(ll_dispatch) + p50(ll_combine);
    report["low_latency_us"] = ll;
    if (!times[normal_dispatch].empty()) {
      const double normal = p50(normal_dispatch) + p50(normal_combine);
      report["normal_us"] = normal;
      report["speedup"] = normal / ll;
    }
    report["hook_issue_ratio"] = {{"dispatch", p50(ll_dispatch) / p50(hook_dispatch_issue)},
                                  {"combine", p50(ll_combine) / p50(hook_combine_issue)}};
    report["low_latency_fabric_per_call"] = {{"puts", fabric_puts_}, {"signals", fabric_signals_}};
    return report;
  }

 private:
  static Group make_group(Duration timeout) {
    GroupOptions options;
    options.timeout = timeout;
    return Group::from_env(options);
  }

  Config normal_config() const {
    Config config;
    config.num_sms = o_.base.num_sms;
    config.max_nodes = o_.base.max_nodes;
    config.max_hidden = static_cast<int>(o_.base.hidden);
    config.max_topk = o_.base.topk;
    config.timeout = timeout_;
    if (o_.base.workers > 0) config.host_workers = o_.base.workers;
    return config;
  }

  LowLatencyBenchOptions o_;
  Duration timeout_;
  Group group_;
  bench::RoutingSpec spec_;
  bench::RankInputs bf16_;
  bench::RankInputs fp8_;
  double fabric_puts_ = 0;  // rank 0's commands to other nodes per low-latency call (measure())
  double fabric_signals_ = 0;
};

void print_report(const nlohmann::json& report) {
  std::printf(
      "ferry low-latency: %d ranks (%d nodes x %d), %lld tokens/rank, hidden %lld, top-%d of %lld experts, "
      "%s dispatch, %s combine, %d iters after %d warm-up\n",
      report["ranks"].get<int>(), report["nodes"].get<int>(),
      report["ranks"].get<int>() / report["nodes"].get<int>(), report["tokens"].get<long long>(),
      report["hidden"].get<long long>(), report["topk"].get<int>(), report["experts"].get<long long>(),
      report["dispatch"].get<std::string>().c_str(), report["combine"].get<std::string>().c_str(),
      report["iters"].get<int>(), report["warmup"].get<int>());
  std::printf("  %-26s %10s %10s\n", "call (whole, per rank)", "p50 us", "p99 us");
  for (const char* name : kSeriesNames) {
    if (!report["latency_us"].contains(name)) continue;
    const auto& entry = report["latency_us"][name];
    std::printf("  %-26s %10.1f %10.1f\n", name, entry["p50"].get<double>(), entry["p99"].get<double>());
  }
  if (report.contains("normal_us")) {
    std::printf("  dispatch + combine p50: normal %.1f us, low-latency %.1f us: %.2fx lower\n",
                report["normal_us"].get<double>(), report["low_latency_us"].get<double>(),
                report["speedup"].get<double>());
  }
  std::printf("  hook: whole call / issue-only call (p50): dispatch %.1fx, combine %.1fx\n",
              report["hook_issue_ratio"]["dispatch"].get<double>(),
              report["hook_issue_ratio"]["combine"].get<double>());
  std::printf("  low-latency commands to other nodes per call (rank 0): %.1f puts, %.1f signals\n",
              report["low_latency_fabric_per_call"]["puts"].get<double>(),
              report["low_latency_fabric_per_call"]["signals"].get<double>());
  std::fflush(stdout);
}

int run(const LowLatencyBenchOptions& o) {
  LowLatencyBenchJob job(o);
  const auto times = job.measure();
  if (job.group().rank() != 0) return 0;
  const nlohmann::json report = job.report(times);
  print_report(report);
  if (!o.base.json.empty()) {
    std::ofstream out(o.base.json);
    out << report.dump(2) << "\n";
    if (!out) fail(Errc::system, "bench low-latency: cannot write " + o.base.json);
    std::printf("wrote %s\n", o.base.json.c_str());
  }
  return 0;
}

}  // namespace

void register_low_latency_bench(CLI::App& bench, int& exit_code) {
  auto options = std::make_shared<LowLatencyBenchOptions>();
  options->base.tokens = 128;
  options->base.experts = 256;
  options->base.iters = 30;
  options->base.warmup = 3;
  auto* command = bench.add_subcommand(
      "low-latency",
      "Time the low-latency mode's dispatch and combine (whole calls and hook-mode issue-only calls) next to "
      "the normal mode's on the same routing; fp8 dispatch unless --bf16, bf16 combine");
  bench::add_routing_options(*command, options->base);
  command->add_option("--iters", options->base.iters, "Timed iterations")
      ->check(CLI::PositiveNumber)
      ->capture_default_str();
  command->add_option("--warmup", options->base.warmup, "Untimed iterations first")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
  command->add_option("--json", options->base.json, "Write the report as JSON to this file (rank 0)");
  auto* bf16 = command->add_flag("--bf16", options->bf16,
                                 "Dispatch bf16 rows (both modes) instead of fp8 (--fp8 is the default)");
  auto* round =
      command->add_flag("--round-scale", options->round_scale, "Low-latency fp8: power-of-two scales")
          ->excludes(bf16);
  command->add_flag("--ue8m0", options->ue8m0, "Low-latency fp8: UE8M0 scales")->needs(round);
  command->add_flag("--no-normal", options->no_normal, "Skip the normal mode");
  command->add_flag(
      "--zero-copy", options->zero_copy,
      "Low-latency combine from get_next_low_latency_combine_buffer (filled before each timed call)");
  cli::set_examples(*command,
                    {
                        "ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench low-latency --tokens 128 "
                        "--hidden 7168 --topk 8 --experts 256",
                        "ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench low-latency --bf16 "
                        "--json low-latency.json",
                    });
  command->callback([options, &exit_code] { exit_code = run(*options); });
}

}  // namespace ferry::tools
