// The reference for the low-latency mode: what every rank must receive (rows packed per local expert by
// source rank then (token, slot), fp8 rows and scales as DeepEP computes them) and what combine must return
// (each token's rows weighted and summed in topk order), computed directly from every rank's inputs, with the
// masked ranks left out. Written without the protocol's code paths: its own slot order, its own fp8
// conversion (numeric.hpp's float_to_e4m3), its own sums.
#pragma once

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "ferry/low_latency.hpp"

namespace ferry::test {

enum class LowLatencyRouting {
  random,      // K distinct experts per token, about one slot in ten empty, a few tokens with none
  one_expert,  // every token's first slot is expert 0: its slots fill up to num_max_dispatch_tokens_per_rank
};

struct LowLatencyShapeSpec {
  int num_nodes = 1;
  int local_size = 2;
  int experts_per_rank = 2;
  int num_topk = 4;
  std::int64_t hidden = 256;     // a multiple of 128 for fp8
  std::int64_t max_tokens = 16;  // per rank; each rank draws [0, max_tokens] tokens
  LowLatencyRouting routing = LowLatencyRouting::random;
};

struct LowLatencyRank {
  std::int64_t num_tokens = 0;
  std::vector<std::uint16_t> x;    // [T, H] bf16
  std::vector<std::int64_t> topk;  // [T, K]
  std::vector<float> weights;      // [T, K]
};

struct LowLatencyScenario {
  int num_nodes = 1;
  int local_size = 1;
  std::int64_t max_tokens = 1;
  std::int64_t hidden = 8;
  std::int64_t num_experts = 1;
  int num_topk = 1;
  std::vector<LowLatencyRank> ranks;

  int num_ranks() const { return num_nodes * local_size; }
  std::int64_t local_experts() const { return num_experts / num_ranks(); }
  std::int64_t rows_per_expert() const { return num_ranks() * max_tokens; }
  int rank_of(std::int64_t expert) const { return static_cast<int>(expert / local_experts()); }
  std::size_t bytes_hint() const;
  TensorView x(int rank) const;
  TensorView topk(int rank) const;
  TensorView weights(int rank) const;
};

LowLatencyScenario make_low_latency_scenario(const LowLatencyShapeSpec& spec, std::mt19937_64& rng);

// `masked[r]`: rank r takes no part and every other rank skips it.
using Masked = std::vector<bool>;

// One received row: which source rank and token it came from.
struct LowLatencyRow {
  int source;
  std::int64_t token;
};
// Rank r's packed rows per local expert.
std::vector<std::vector<LowLatencyRow>> expected_low_latency_rows(const LowLatencyScenario& scenario,
                                                                  int rank, const Masked& masked);

// DeepEP's fp8 cast of one bf16 row: e4m3 bytes and one scale_inv per 128 values.
void reference_fp8_row(const std::uint16_t* x, std::int64_t hidden, bool round_scale,
                       std::vector<std::uint8_t>& out, std::vector<float>& scales);

struct DispatchFlags {
  bool fp8 = true;
  bool round_scale = false;
  bool ue8m0 = false;
};

// Every field of rank r's dispatch result against the reference; "" or the first difference.
std::string check_low_latency_dispatch(const LowLatencyScenario& scenario, int rank, const Masked& masked,
                                       const DispatchFlags& flags, const LowLatencyDispatchResult& got);

// What an expert "computes" in the tests: a bf16 row determined by (expert, source rank, token), so the
// expected combine needs no knowledge of where rows were packed.
std::vector<std::uint16_t> expert_output(std::int64_t expert, int source, std::int64_t token,
                                         std::int64_t hidden);

// Rank r's combine input [E/R, R*T, H] bf16 from its dispatch result (rows past recv_count zero).
void fill_expert_outputs(const LowLatencyScenario& scenario, int rank, const LowLatencyDispatchResult& got,
                         std::uint16_t* y);

// Rank r's combined [T, H] bf16: sum over k of weight * expert_output(topk[t][k], r, t), k ascending, rows
// of masked ranks left out.
std::vector<std::uint16_t> expected_low_latency_combine(const LowLatencyScenario& scenario, int rank,
                                                        const Masked& masked);

std::string check_low_latency_combine(const LowLatencyScenario& scenario, int rank, const Masked& masked,
                                      const std::uint16_t* got);

}  // namespace ferry::test
