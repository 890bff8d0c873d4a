// The dispatch/combine benchmark report, shared by `ferry bench dispatch|combine` and the MPI baseline: every
// rank measures itself (RankMeasurement), rank 0 gathers them and summarizes, prints and writes JSON.
//
// Bytes are counted as DeepEP's test_internode counts them: token rows (payload, scales included, no headers)
// that cross the fabric ("RDMA"), and rows delivered to a rank ("NVL"); both divided by the time per op. Next
// to them, the rows every path actually carried, and the wire bytes (headers included) where a tool knows
// them.
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "bench/dispatch_options.hpp"
#include "bench/routing_gen.hpp"

namespace ferry::bench {

struct PathCount {
  double rows = 0;        // messages (token rows) per iteration
  double wire_bytes = 0;  // bytes per iteration as sent, headers included
};

struct RankMeasurement {
  int rank = 0;
  int node = 0;
  double seconds_per_iter = 0;
  PathCount fabric;           // crossed nodes
  PathCount node_path;        // to another rank of the same node
  PathCount self;             // stayed on this rank
  double recv_rows = 0;       // rows this rank received per dispatch (DeepEP's NVL rows)
  double fabric_puts = 0;     // fabric writes per iteration (a chunk of rows is one)
  double fabric_signals = 0;  // fabric atomics per iteration (tails published, credits returned)
  std::uint64_t predicted_fabric_rows = 0;  // this rank's tokens x distinct remote target nodes
  std::uint64_t deepep_rdma_rows = 0;       // this rank's tokens x distinct target nodes, own node included
  std::string check_error;                  // empty: passed (or not checked)
  std::vector<double> iteration_seconds;    // each timed iteration on its own (empty: not recorded)
};

nlohmann::json to_json(const RankMeasurement& measurement);

// What was run, for the report's header.
struct BenchHeader {
  std::string tool;  // "ferry" or "alltoallv"
  std::string op;    // "dispatch" or "combine"
  int num_ranks = 1;
  int local_size = 1;
  std::size_t row_bytes = 0;  // bytes of one token row on the path this op sends
  DispatchBenchOptions options;
};

// Per-rank rows predicted by the one-crossing-per-node rule and DeepEP's RDMA count, from a rank's routing.
void count_routing_rows(const RoutingSpec& spec, const Routing& routing, int rank,
                        RankMeasurement& measurement);

// Rank 0: the summary of all ranks' measurements (JSON objects from to_json, in rank order). When the ranks
// recorded their iterations, "latency_us" holds percentiles (p50, p90, p99, max) over every rank's
// iterations: the time one rank waits for one operation, as a caller would see it.
nlohmann::json summarize(const BenchHeader& header, const std::vector<nlohmann::json>& ranks);
void print_summary(const nlohmann::json& summary);
// Writes the summary to `path`; throws std::runtime_error naming the file on failure.
void write_json(const nlohmann::json& summary, const std::string& path);

}  // namespace ferry::bench
