// `ferry bench transport`: fabric put bandwidth and put_signal latency between rank pairs, next to the
// ceilings measured in the same run on the same ranks — raw TCP between the pair's addresses and local
// memcpy.
//
// Pairs: rank r < W/2 with rank r + W/2 (across nodes when the job has 2 nodes). The lower rank of each pair
// sends; all pairs run at once.
#pragma once

#include <cstddef>
#include <nlohmann/json.hpp>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/fabric.hpp"

namespace ferry::tools {

struct TransportBenchOptions {
  transport::FabricKind fabric = transport::FabricKind::ucx;
  std::vector<std::size_t> sizes;  // message sizes, ascending
  int iters = 0;                   // iterations per size and measurement; 0 picks by size
  bool skip_tcp = false;           // leave out the raw TCP ceiling
  Duration timeout = kDefaultTimeout;
};

// Runs the benchmark on every rank of `group` (collective). Returns the whole job's report on every rank:
// {"benchmark", "date", "machine", "job", "fabric", "options", "pairs": [{"sender", "receiver", "results": [
//   {"bytes", "put_iters", "put_gbps", "put_latency_us", "latency_iters", "tcp_gbps", "tcp_latency_us",
//    "memcpy_gbps"}]}]}. GB/s are 1e9 bytes per second; latencies are half round trips.
nlohmann::json run_transport_bench(Group& group, const TransportBenchOptions& options);

// The report as a table per pair, on stdout.
void print_transport_report(const nlohmann::json& report);

}  // namespace ferry::tools
