// `ferry probe overlap`: how much dispatch/combine and compute slow each other down when they run at once,
// which is the question DualPipe depends on. On the CPU the compute is an OpenBLAS SGEMM loop on a thread of
// its own beside the rank's communication (whose host workers are the "SMs" num_sms buys); each is timed
// alone, then both together:
//
//   slowdown (comm)  = comm time together / comm time alone
//   slowdown (GEMM)  = GEMM time together / GEMM time alone
//   overlap          = (comm alone + GEMM alone - both together) / min(comm alone, GEMM alone)
//                      1: the shorter one hid completely; 0: they might as well have run one after the other.
//
// The GEMM loop is sized per rank to last about as long as the communication alone. On an emulated cluster
// all ranks share the machine's cores, so "alone" already includes the other ranks' GEMMs and traffic; on a
// GPU cluster the same question is asked of a cuBLAS GEMM on the SMs communication leaves (`ferry bench
// gpu-gemm`, GPU only).
#pragma once

#include <nlohmann/json.hpp>

#include "bench/dispatch_options.hpp"
#include "ferry/group.hpp"

namespace ferry::tools::probe {

struct OverlapOptions {
  bench::DispatchBenchOptions comm;  // routing, sizes, num_sms; comm.iters round trips per measurement
  int gemm_size = 256;               // m = n = k of each SGEMM
};

// Collective. Returns {"ranks": [per rank: comm_alone_s, gemm_alone_s, comm_together_s, gemm_together_s,
// both_s, gemms, comm_slowdown, gemm_slowdown, overlap], "mean": {same keys}} on every rank.
nlohmann::json run_overlap_probe(Group& group, const OverlapOptions& options);

// The per-rank table and the mean, as printed by rank 0.
std::string format_overlap_report(const nlohmann::json& report);

// The ratios from the four times (shared with tests): {"comm_slowdown", "gemm_slowdown", "overlap"}.
nlohmann::json overlap_ratios(double comm_alone, double gemm_alone, double comm_together,
                              double gemm_together, double both);

}  // namespace ferry::tools::probe
