// Runs a scenario on an in-process cluster (every rank a Buffer of one LocalCluster, driven from this thread:
// operations are asynchronous, so all ranks are issued first and waited for after) and compares the results
// with the reference exactly. Check functions return "" or the first difference, naming rank, row and source.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ferry/buffer.hpp"
#include "reference.hpp"

namespace ferry::test {

// One rank's inputs of a scenario, as Buffer::dispatch takes them.
DispatchInputs inputs_of(const Scenario& scenario, int rank);

// A random stream for a randomized test, its seed printed (FERRY_TEST_SEED repeats it).
std::mt19937_64 seeded(const char* test);

struct ClusterRun {
  ClusterRun(const Scenario& scenario, const Config& config);

  std::vector<DispatchResult> dispatch(const Scenario& scenario, const DispatchOptions& options = {});
  std::vector<DispatchResult> dispatch_cached(const Scenario& scenario,
                                              const std::vector<DispatchResult>& first);
  std::vector<Tensor> combine(const std::vector<std::vector<std::uint8_t>>& results, std::int64_t hidden,
                              DType dtype, const std::vector<DispatchResult>& dispatched);

  // Sum over ranks of what each path carried.
  TrafficCounters total(TrafficCounters BufferTraffic::*kind) const;

  std::unique_ptr<LocalCluster> cluster;
  std::vector<std::unique_ptr<Buffer>> buffers;
};

// What a dispatch result is checked for. Padding rows (worst-case sizing) must be zero, with topk -1 and
// weight 0; tokens_per_local_expert must be the received ids' count rounded up to expert_alignment.
struct DispatchCheck {
  bool with_topk = true;        // false: a cached dispatch (no topk travels)
  std::int64_t worst_rows = 0;  // > 0: outputs sized for this many rows
  int expert_alignment = 1;
  bool with_records = true;  // false: a CUDA Buffer's handle, whose source records stay on the GPU
};
std::string check_dispatch_rank(const Scenario& scenario, const std::vector<Source>& sources, int rank,
                                const DispatchResult& result, const DispatchCheck& check);
// worst_rows: the outputs' rows of a worst-case dispatch (0: as many as received); expert_alignment: the
// dispatch's DispatchOptions::expert_alignment (tokens_per_local_expert rounded up to it).
std::string check_dispatch_rank(const Scenario& scenario, const std::vector<Source>& sources, int rank,
                                const DispatchResult& result, bool with_topk, std::int64_t worst_rows = 0,
                                int expert_alignment = 1);
std::string check_dispatch(const Scenario& scenario, const std::vector<std::vector<Source>>& sources,
                           const std::vector<DispatchResult>& results, bool with_topk,
                           std::int64_t worst_rows = 0, int expert_alignment = 1);

std::string check_combine_rank(const Scenario& scenario, const std::vector<std::uint8_t>& expected, int rank,
                               const Tensor& out);
std::string check_combine(const Scenario& scenario, const std::vector<std::vector<std::uint8_t>>& expected,
                          const std::vector<Tensor>& outputs);

// Fabric puts only between rail partners on different nodes.
std::string check_rail_only(const ClusterRun& run, const Scenario& scenario);

// A Config small enough for tests: few channels, small rings, a short timeout.
Config small_config(std::mt19937_64& rng, std::int64_t max_hidden, int max_topk);

}  // namespace ferry::test
