// Shared by the Group::split tests (in-process threads and the `ferry launch` worker): dispatch + combine on
// a Buffer over a (sub-)group, every result of this rank checked exactly against the reference.
#pragma once

#include <cstdint>
#include <random>
#include <string>

#include "../dispatch/cluster_run.hpp"
#include "../dispatch/reference.hpp"
#include "ferry/buffer.hpp"
#include "ferry/group.hpp"

namespace ferry::test {

// Small and fixed, so every rank of a group builds the same Buffer without talking.
inline Config split_test_config(int num_nodes) {
  Config config;
  config.num_sms = 4;
  config.max_hidden = 64;
  config.max_topk = 4;
  config.rdma_ring_slots = 4;
  config.rdma_chunk = 2;
  config.nvl_ring_slots = 4;
  config.nvl_chunk = 2;
  config.max_nodes = num_nodes;
  config.timeout = std::chrono::seconds(60);
  return config;
}
inline Config split_test_config(const Group& group) {
  return split_test_config(group.num_nodes());
}

// A seed per group: sub-groups built from one test seed get different data, so tokens that reach the wrong
// sub-group cannot pass the checks by accident.
inline std::uint64_t group_seed(std::uint64_t seed, const Group& group) {
  std::uint64_t hash = 14695981039346656037ull ^ seed;
  for (char c : group.job().job_id) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ull;
  }
  return hash;
}

// Runs `rounds` dispatch + combine rounds on `buffer` (built over `group`); "" or the first difference.
inline std::string run_rounds(Buffer& buffer, const Group& group, std::uint64_t seed, int rounds) {
  std::mt19937_64 rng(group_seed(seed, group));  // the same stream on every rank of the group
  const int rank = group.rank();
  for (int round = 0; round < rounds; ++round) {
    ScenarioShape shape;
    shape.num_nodes = group.num_nodes();
    shape.local_size = group.local_size();
    shape.experts_per_rank = 2;
    shape.num_topk = 1 + static_cast<int>(rng() % 4);
    shape.hidden = 1 + static_cast<std::int64_t>(rng() % 64);
    shape.max_tokens = 24;
    shape.max_nodes = group.num_nodes();
    Scenario scenario = make_scenario(shape, rng);
    auto sources = expected_sources(scenario);
    auto results = make_results(scenario, sources, DType::bf16, 0, rng);
    auto expected = expected_combine(scenario, sources, results, DType::bf16);

    const RankData& data = scenario.ranks[rank];
    DispatchInputs inputs;
    inputs.x = TensorView(data.x.data(), {data.num_tokens, scenario.hidden}, scenario.dtype);
    inputs.topk_idx = TensorView(data.topk.data(), {data.num_tokens, scenario.num_topk}, DType::int64);
    inputs.topk_weights = TensorView(data.weights.data(), {data.num_tokens, scenario.num_topk}, DType::fp32);
    auto pending = buffer.dispatch(inputs, buffer.get_layout(inputs.topk_idx, scenario.num_experts));
    DispatchResult& got = pending.wait();  // lives in `pending`
    const std::string where =
        group.job().job_id + " rank " + std::to_string(rank) + " round " + std::to_string(round);
    std::string diff = check_dispatch_rank(scenario, sources[rank], rank, got, true);
    if (!diff.empty()) return where + " dispatch: " + diff;
    TensorView y(results[rank].data(), {got.handle.recv_rows(), scenario.hidden}, DType::bf16);
    Tensor out = std::move(buffer.combine(y, got.handle).wait().out);
    diff = check_combine_rank(scenario, expected[rank], rank, out);
    if (!diff.empty()) return where + " combine: " + diff;
  }
  return "";
}

}  // namespace ferry::test
