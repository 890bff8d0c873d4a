// `ferry bench low-latency`: the low-latency mode (LowLatencyBuffer) next to the normal mode (Buffer) on the
// same routing and rows, in the same run: p50/p99 microseconds per dispatch and per combine (whole calls),
// and the hook mode's issue-only call against the whole call.
//
//   ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench low-latency --tokens 128 --hidden 7168 --topk 8
//       --experts 256
#pragma once

#include <CLI/CLI.hpp>

namespace ferry::tools {

void register_low_latency_bench(CLI::App& bench, int& exit_code);

}  // namespace ferry::tools
