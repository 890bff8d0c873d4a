// `ferry bench dispatch|combine`: DeepEP-style dispatch and combine of synthetic node-limited routings
// through ferry's Buffer on every rank of the job, timed, counted per path and (with --check) verified
// exactly.
//
//   ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench dispatch --tokens 4096 --hidden 7168 --json
//   d.json ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench combine --fp8 --check
#include "bench/dispatch_bench.hpp"

#include <chrono>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "bench/dispatch_check.hpp"
#include "bench/dispatch_options.hpp"
#include "bench/dispatch_report.hpp"
#include "bench/dispatch_rows.hpp"
#include "bench/routing_gen.hpp"
#include "ferry/buffer.hpp"
#include "ferry/core/deadline.hpp"
#include "ferry/group.hpp"
#include "ferry/kernels/protocol/numeric.hpp"
#include "ferry/transport/store.hpp"

namespace ferry::tools {
namespace {

using bench::DispatchBenchOptions;

// This rank's token rows and routing, as ferry's inputs.
struct RankInputs {
  bench::Routing routing;
  std::vector<std::uint8_t> x;  // [T, H] bf16 or fp8 bits
  std::vector<float> scales;    // [T, blocks] when fp8
  DispatchInputs view;
};

void make_inputs(const DispatchBenchOptions& o, const bench::RoutingSpec& spec, int rank, RankInputs& in) {
  in.routing = bench::generate_routing(spec, rank);
  const std::int64_t T = o.tokens, H = o.hidden, blocks = bench::scale_blocks(H);
  in.x.resize(static_cast<std::size_t>(T * H) * (o.fp8 ? 1 : 2));
  if (o.fp8) in.scales.resize(static_cast<std::size_t>(T * blocks));
  for (std::int64_t t = 0; t < T; ++t) {
    if (o.fp8) {
      bench::fill_fp8_row(rank, t, H, in.x.data() + t * H, in.scales.data() + t * blocks);
    } else {
      bench::fill_bf16_row(rank, t, H, reinterpret_cast<std::uint16_t*>(in.x.data()) + t * H);
    }
  }
  in.view.x = TensorView(in.x.data(), {T, H}, o.fp8 ? DType::fp8_e4m3 : DType::bf16);
  if (o.fp8) in.view.x_scales = TensorView(in.scales.data(), {T, blocks}, DType::fp32);
  in.view.topk_idx = TensorView(in.routing.topk_idx.data(), {T, o.topk}, DType::int64);
  in.view.topk_weights = TensorView(in.routing.topk_weights.data(), {T, o.topk}, DType::fp32);
}

// Combine input: the received rows unchanged, as bf16 (fp8 rows dequantized, exact for the bench's values).
Tensor dequantized_rows(const DispatchResult& got, std::int64_t hidden) {
  namespace p = kernels::protocol;
  const std::int64_t rows = got.handle.recv_rows(), blocks = bench::scale_blocks(hidden);
  Tensor y({rows, hidden}, DType::bf16);
  const auto* bits = got.recv_x.data_as<std::uint8_t>();
  const auto* scales = got.recv_x_scales.data_as<float>();
  auto* out = y.data_as<std::uint16_t>();
  for (std::int64_t r = 0; r < rows; ++r) {
    for (std::int64_t c = 0; c < hidden; ++c) {
      const float value =
          p::e4m3_to_float(bits[r * hidden + c]) * scales[r * blocks + c / bench::kScaleBlock];
      out[r * hidden + c] = p::float_to_bf16(value);
    }
  }
  return y;
}

bench::PathCount per_iter(const PathTraffic& after, const PathTraffic& before, int iters) {
  return {static_cast<double>(after.messages - before.messages) / iters,
          static_cast<double>(after.bytes - before.bytes) / iters};
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int run_dispatch_bench(const DispatchBenchOptions& o, bool combine_mode) {
  const std::string op = combine_mode ? "combine" : "dispatch";
  const auto timeout = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(o.timeout_s));
  GroupOptions group_options;
  group_options.timeout = timeout;
  Group group = Group::from_env(group_options);
  const int rank = group.rank(), R = group.world_size(), L = group.local_size();
  const bench::RoutingSpec spec = bench::routing_spec(o, R, L);
  bench::validate(spec);

  Config config;
  config.num_sms = o.num_sms;
  config.max_nodes = o.max_nodes;
  config.max_hidden = static_cast<int>(o.hidden);
  config.max_topk = o.topk;
  config.timeout = timeout;
  if (o.rdma_slots > 0) config.rdma_ring_slots = o.rdma_slots;
  if (o.rdma_chunk > 0) config.rdma_chunk = o.rdma_chunk;
  if (o.nvl_slots > 0) config.nvl_ring_slots = o.nvl_slots;
  if (o.nvl_chunk > 0) config.nvl_chunk = o.nvl_chunk;
  if (o.workers > 0) config.host_workers = o.workers;
  auto buffer = std::make_unique<Buffer>(group, config);

  RankInputs in;
  make_inputs(o, spec, rank, in);
  const Layout layout = buffer->get_layout(in.view.topk_idx, o.experts);

  bench::RankMeasurement m;
  m.rank = rank;
  m.node = group.node();
  bench::count_routing_rows(spec, in.routing, rank, m);
  std::optional<Pending<DispatchResult>> dispatched;
  std::optional<Pending<CombineResult>> combined;
  Tensor y_storage;
  TensorView y;
  auto dispatch_once = [&] {
    dispatched.emplace(buffer->dispatch(in.view, layout));
    dispatched->wait();
  };
  auto combine_once = [&] {
    combined.emplace(buffer->combine(y, dispatched->wait().handle));
    combined->wait();
  };
  if (combine_mode) {
    dispatch_once();
    const DispatchResult& got = dispatched->wait();
    if (o.fp8) y_storage = dequantized_rows(got, o.hidden);
    y = o.fp8 ? y_storage.view() : got.recv_x.view();
  }
  for (int i = 0; i < o.warmup; ++i) combine_mode ? combine_once() : dispatch_once();

  group.barrier("bench/" + op + "/start");
  const BufferTraffic before = buffer->traffic();
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < o.iters; ++i) combine_mode ? combine_once() : dispatch_once();
  m.seconds_per_iter = seconds_since(start) / o.iters;
  const BufferTraffic after = buffer->traffic();
  const TrafficCounters& a = combine_mode ? after.combine : after.dispatch;
  const TrafficCounters& b = combine_mode ? before.combine : before.dispatch;
  m.fabric = per_iter(a.fabric, b.fabric, o.iters);
  m.node_path = per_iter(a.node, b.node, o.iters);
  m.self = per_iter(a.self, b.self, o.iters);
  m.fabric_puts = static_cast<double>(a.fabric_puts - b.fabric_puts) / o.iters;
  m.fabric_signals = static_cast<double>(a.fabric_signals - b.fabric_signals) / o.iters;
  m.recv_rows = static_cast<double>(dispatched->wait().num_recv_tokens);

  if (o.check) {
    std::vector<bench::Routing> routings;
    for (int r = 0; r < R; ++r) routings.push_back(r == rank ? in.routing : bench::generate_routing(spec, r));
    m.check_error = bench::check_dispatch(spec, routings, rank, o.hidden, o.fp8, dispatched->wait());
    if (m.check_error.empty() && combine_mode) {
      m.check_error = bench::check_combine(spec, in.routing, rank, o.hidden, combined->wait().out);
    }
  }
  combined.reset();
  dispatched.reset();
  buffer.reset();  // collective: every rank is done with the data plane before the report

  const std::string mine = bench::to_json(m).dump();
  auto gathered = group.all_gather("bench/" + op + "/report",
                                   {reinterpret_cast<const std::uint8_t*>(mine.data()), mine.size()});
  std::vector<nlohmann::json> ranks;
  for (const auto& bytes : gathered) ranks.push_back(nlohmann::json::parse(bytes.begin(), bytes.end()));
  bench::BenchHeader header{
      "ferry",
      op,
      R,
      L,
      combine_mode ? static_cast<std::size_t>(2 * o.hidden) : bench::row_bytes(o.hidden, o.fp8),
      o};
  nlohmann::json summary = bench::summarize(header, ranks);
  // ferry's promise: each token crosses to each remote node once, in either direction.
  if (o.check && !summary["fabric_rule"]["within"].get<bool>()) {
    summary["errors"].push_back("fabric carried more rows than the one-crossing-per-node rule allows");
    summary["check"] = "failed";
  }
  if (rank == 0) {
    bench::print_summary(summary);
    if (!o.json.empty()) bench::write_json(summary, o.json);
  }
  return summary["check"] == "failed" ? 1 : 0;
}

}  // namespace

void register_dispatch_bench(CLI::App& bench, int& exit_code) {
  for (const bool combine_mode : {false, true}) {
    auto options = std::make_shared<DispatchBenchOptions>();
    auto* command = bench.add_subcommand(
        combine_mode ? "combine" : "dispatch",
        combine_mode ? "Time combine (after one untimed dispatch) of a synthetic routing on every rank"
                     : "Time dispatch (notify included, layout not) of a synthetic routing on every rank");
    bench::add_dispatch_options(*command, *options);
    command->callback(
        [options, combine_mode, &exit_code] { exit_code = run_dispatch_bench(*options, combine_mode); });
  }
}

}  // namespace ferry::tools
