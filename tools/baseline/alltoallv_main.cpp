// ferry-alltoallv: the MPI baseline for `ferry bench dispatch|combine`. Same options, same routing generator
// (same seed => same routing on the same rank), the same report; one run times dispatch and combine
// separately.
//
//   mpirun --allow-run-as-root --oversubscribe --mca pml ob1 --mca btl self,vader -np 4
//       ferry-alltoallv --ranks-per-node 2 --tokens 4096 --hidden 7168 --check --json a2a.json   (one line)
#include <mpi.h>

#include <CLI/CLI.hpp>
#include <array>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <string>
#include <vector>

#include "baseline/alltoallv_dispatcher.hpp"
#include "bench/dispatch_options.hpp"
#include "bench/dispatch_report.hpp"
#include "bench/dispatch_rows.hpp"
#include "bench/routing_gen.hpp"
#include "cli/bounds.hpp"

namespace ferry::baseline {
namespace {

using bench::DispatchBenchOptions;

struct Job {
  int rank = 0;
  int num_ranks = 1;
  int local_size = 1;
};

// Rows of this rank's tokens, each row_bytes long: bf16 values, or fp8 values followed by their scales.
std::vector<std::uint8_t> make_rows(const DispatchBenchOptions& o, int rank) {
  const std::size_t row = bench::row_bytes(o.hidden, o.fp8);
  std::vector<std::uint8_t> x(row * o.tokens);
  for (std::int64_t t = 0; t < o.tokens; ++t) {
    std::uint8_t* out = &x[t * row];
    if (o.fp8) {
      bench::fill_fp8_row(rank, t, o.hidden, out, reinterpret_cast<float*>(out + o.hidden));
    } else {
      bench::fill_bf16_row(rank, t, o.hidden, reinterpret_cast<std::uint16_t*>(out));
    }
  }
  return x;
}

// Received rows as the combine input: unchanged values in bf16 (fp8 rows dequantized; exact for these
// values).
std::vector<std::uint16_t> as_bf16(const DispatchBenchOptions& o, const std::vector<std::uint8_t>& received,
                                   std::int64_t rows) {
  const std::size_t row = bench::row_bytes(o.hidden, o.fp8);
  std::vector<std::uint16_t> y(static_cast<std::size_t>(rows * o.hidden));
  // Invert e4m3_of_digit: the bench only ever sends digits in [-7, 7].
  std::array<float, 256> digit_of{};
  for (int d = -7; d <= 7; ++d) digit_of[bench::e4m3_of_digit(d)] = static_cast<float>(d);
  for (std::int64_t r = 0; r < rows; ++r) {
    const std::uint8_t* in = &received[r * row];
    if (!o.fp8) {
      std::memcpy(&y[r * o.hidden], in, row);
      continue;
    }
    const auto* scales = reinterpret_cast<const float*>(in + o.hidden);
    for (std::int64_t c = 0; c < o.hidden; ++c) {
      y[r * o.hidden + c] = bench::exact_bf16(digit_of[in[c]] * scales[c / bench::kScaleBlock]);
    }
  }
  return y;
}

std::string check_received(const bench::RoutingSpec& spec, const DispatchBenchOptions& o, int rank,
                           const std::vector<std::uint8_t>& received, std::int64_t rows) {
  const std::size_t row = bench::row_bytes(o.hidden, o.fp8);
  const std::int64_t per_rank = spec.experts_per_rank();
  std::vector<std::uint8_t> expected(row);
  std::int64_t r = 0;
  for (int src = 0; src < spec.num_ranks; ++src) {
    const bench::Routing routing = bench::generate_routing(spec, src);
    for (std::int64_t e = rank * per_rank; e < (rank + 1) * per_rank; ++e) {
      for (std::int64_t t = 0; t < spec.num_tokens; ++t) {
        bool routed = false;
        for (int k = 0; k < spec.topk; ++k) routed |= routing.topk_idx[t * spec.topk + k] == e;
        if (!routed) continue;
        const std::string here = "rank " + std::to_string(rank) + " row " + std::to_string(r) +
                                 " (source rank " + std::to_string(src) + ", token " + std::to_string(t) +
                                 ", expert " + std::to_string(e) + ")";
        if (r >= rows) return here + ": missing, only " + std::to_string(rows) + " rows received";
        if (o.fp8) {
          bench::fill_fp8_row(src, t, o.hidden, expected.data(),
                              reinterpret_cast<float*>(&expected[o.hidden]));
        } else {
          bench::fill_bf16_row(src, t, o.hidden, reinterpret_cast<std::uint16_t*>(expected.data()));
        }
        const std::uint8_t* got = &received[r * row];
        for (std::size_t b = 0; b < row; ++b) {
          if (got[b] != expected[b]) {
            return here + " byte " + std::to_string(b) + " (column " +
                   std::to_string(o.fp8 ? static_cast<std::int64_t>(b) : static_cast<std::int64_t>(b / 2)) +
                   "): " + std::to_string(got[b]) + ", expected " + std::to_string(expected[b]);
          }
        }
        ++r;
      }
    }
  }
  if (r != rows)
    return "rank " + std::to_string(rank) + ": received " + std::to_string(rows) + " rows, expected " +
           std::to_string(r);
  return "";
}

std::string check_combined(const DispatchBenchOptions& o, const bench::Routing& routing, int rank,
                           const std::vector<std::uint16_t>& out) {
  for (std::int64_t t = 0; t < o.tokens; ++t) {
    int copies = 0;
    for (int k = 0; k < o.topk; ++k) copies += routing.topk_idx[t * o.topk + k] >= 0 ? 1 : 0;
    for (std::int64_t c = 0; c < o.hidden; ++c) {
      const float want = bench::row_value(rank, t, c) * static_cast<float>(copies);
      const float have = bench::bf16_value(out[t * o.hidden + c]);
      if (have != want) {
        return "rank " + std::to_string(rank) + " combine out row " + std::to_string(t) + " column " +
               std::to_string(c) + ": " + std::to_string(have) + ", expected " + std::to_string(want) +
               " (x * " + std::to_string(copies) + " copies)";
      }
    }
  }
  return "";
}

// Rows per iteration by path, from the counts each rank sends: itself, its node, other nodes.
void count_paths(const Job& job, const std::vector<int>& rows_to, std::size_t row_bytes,
                 bench::RankMeasurement& m) {
  m.fabric = m.node_path = m.self = {};
  for (int r = 0; r < job.num_ranks; ++r) {
    bench::PathCount& path = r == job.rank                                     ? m.self
                             : r / job.local_size == job.rank / job.local_size ? m.node_path
                                                                               : m.fabric;
    path.rows += rows_to[r];
    path.wire_bytes += static_cast<double>(rows_to[r]) * static_cast<double>(row_bytes);
  }
}

std::vector<nlohmann::json> gather_json(const Job& job, const bench::RankMeasurement& m) {
  const std::string mine = bench::to_json(m).dump();
  int length = static_cast<int>(mine.size());
  std::vector<int> lengths(job.num_ranks), displs(job.num_ranks, 0);
  MPI_Gather(&length, 1, MPI_INT, lengths.data(), 1, MPI_INT, 0, MPI_COMM_WORLD);
  int total = 0;
  for (int r = 0; r < job.num_ranks; ++r) {
    displs[r] = total;
    total += lengths[r];
  }
  std::string all(job.rank == 0 ? total : 0, '\0');
  MPI_Gatherv(mine.data(), length, MPI_CHAR, all.data(), lengths.data(), displs.data(), MPI_CHAR, 0,
              MPI_COMM_WORLD);
  std::vector<nlohmann::json> ranks;
  if (job.rank == 0) {
    for (int r = 0; r < job.num_ranks; ++r)
      ranks.push_back(nlohmann::json::parse(all.substr(displs[r], lengths[r])));
  }
  return ranks;
}

double seconds_since(std::chrono::steady_clock::time_point start) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
}

int run(const DispatchBenchOptions& o, Job job) {
  const bench::RoutingSpec spec = bench::routing_spec(o, job.num_ranks, job.local_size);
  bench::validate(spec);
  const bench::Routing routing = bench::generate_routing(spec, job.rank);
  const std::vector<std::uint8_t> x = make_rows(o, job.rank);
  const std::size_t row = bench::row_bytes(o.hidden, o.fp8);
  AlltoallvDispatcher dispatcher(MPI_COMM_WORLD, routing.topk_idx, o.tokens, o.topk, o.experts);

  std::vector<std::uint8_t> received;
  bench::RankMeasurement dispatch_m, combine_m;
  for (bench::RankMeasurement* m : {&dispatch_m, &combine_m}) {
    m->rank = job.rank;
    m->node = job.rank / job.local_size;
    bench::count_routing_rows(spec, routing, job.rank, *m);
  }
  for (int i = 0; i < o.warmup; ++i) dispatcher.dispatch(x.data(), row, received);
  MPI_Barrier(MPI_COMM_WORLD);
  auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < o.iters; ++i) dispatcher.dispatch(x.data(), row, received);
  dispatch_m.seconds_per_iter = seconds_since(start) / o.iters;
  const std::int64_t rows = dispatcher.received_rows();
  count_paths(job, dispatcher.send_counts(), row, dispatch_m);
  dispatch_m.recv_rows = combine_m.recv_rows = static_cast<double>(rows);

  const std::vector<std::uint16_t> y = as_bf16(o, received, rows);
  std::vector<std::uint16_t> out;
  for (int i = 0; i < o.warmup; ++i) dispatcher.combine(y.data(), o.hidden, out);
  MPI_Barrier(MPI_COMM_WORLD);
  start = std::chrono::steady_clock::now();
  for (int i = 0; i < o.iters; ++i) dispatcher.combine(y.data(), o.hidden, out);
  combine_m.seconds_per_iter = seconds_since(start) / o.iters;
  count_paths(job, dispatcher.recv_counts(), static_cast<std::size_t>(o.hidden) * 2, combine_m);

  if (o.check) {
    dispatch_m.check_error = check_received(spec, o, job.rank, received, rows);
    combine_m.check_error = check_combined(o, routing, job.rank, out);
  }
  int failed = !dispatch_m.check_error.empty() || !combine_m.check_error.empty();
  MPI_Allreduce(MPI_IN_PLACE, &failed, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD);

  const auto dispatch_ranks = gather_json(job, dispatch_m);
  const auto combine_ranks = gather_json(job, combine_m);
  if (job.rank == 0) {
    nlohmann::json report;
    report["dispatch"] =
        bench::summarize({"alltoallv", "dispatch", job.num_ranks, job.local_size, row, o}, dispatch_ranks);
    report["combine"] = bench::summarize(
        {"alltoallv", "combine", job.num_ranks, job.local_size, static_cast<std::size_t>(o.hidden) * 2, o},
        combine_ranks);
    bench::print_summary(report["dispatch"]);
    bench::print_summary(report["combine"]);
    if (!o.json.empty()) bench::write_json(report, o.json);
  }
  return failed ? 1 : 0;
}

int local_size_from_env(int num_ranks) {
  const char* value = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE");
  return value != nullptr ? std::atoi(value) : num_ranks;
}

}  // namespace
}  // namespace ferry::baseline

int main(int argc, char** argv) {
  using namespace ferry;
  CLI::App app{"ferry-alltoallv: Megatron-style AlltoAll dispatch/combine over MPI_Alltoallv (the baseline)"};
  bench::DispatchBenchOptions options;
  bench::add_dispatch_options(app, options);
  int ranks_per_node = 0;
  app.add_option("--ranks-per-node", ranks_per_node,
                 "Ranks that count as one node (emulated clusters); 0: Open MPI's local size")
      ->check(tools::cli::whole_in(0, 1024));
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  MPI_Init(&argc, &argv);
  baseline::Job job;
  MPI_Comm_rank(MPI_COMM_WORLD, &job.rank);
  MPI_Comm_size(MPI_COMM_WORLD, &job.num_ranks);
  job.local_size = ranks_per_node > 0 ? ranks_per_node : baseline::local_size_from_env(job.num_ranks);
  int code = 0;
  try {
    if (job.local_size < 1 || job.num_ranks % job.local_size != 0) {
      throw std::invalid_argument("--ranks-per-node " + std::to_string(job.local_size) +
                                  " does not divide the " + std::to_string(job.num_ranks) + " ranks");
    }
    code = baseline::run(options, job);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry-alltoallv rank %d: %s\n", job.rank, e.what());
    MPI_Abort(MPI_COMM_WORLD, 1);  // the other ranks may be waiting in a collective: take them down too
  }
  MPI_Finalize();
  return code;
}
