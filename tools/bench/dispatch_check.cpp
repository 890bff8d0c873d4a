// Benchmark result verification: see dispatch_check.hpp.
#include "bench/dispatch_check.hpp"

#include <cstring>
#include <utility>

#include "bench/dispatch_rows.hpp"

namespace ferry::bench {
namespace {

std::string where(int rank, std::int64_t row, int src, std::int64_t token) {
  return "rank " + std::to_string(rank) + " row " + std::to_string(row) + " (source rank " +
         std::to_string(src) + ", token " + std::to_string(token) + ")";
}

std::string check_values(int rank, std::int64_t row, int src, std::int64_t token, std::int64_t hidden,
                         bool fp8, const DispatchResult& got, std::vector<std::uint8_t>& scratch,
                         std::vector<float>& scales) {
  const std::int64_t blocks = scale_blocks(hidden);
  if (fp8) {
    scratch.resize(hidden);
    scales.resize(blocks);
    fill_fp8_row(src, token, hidden, scratch.data(), scales.data());
    const auto* values = got.recv_x.data_as<std::uint8_t>() + row * hidden;
    const float* got_scales = got.recv_x_scales.data_as<float>() + row * blocks;
    for (std::int64_t c = 0; c < hidden; ++c) {
      if (values[c] != scratch[c]) {
        return where(rank, row, src, token) + " column " + std::to_string(c) + ": fp8 bits " +
               std::to_string(values[c]) + ", expected " + std::to_string(scratch[c]);
      }
    }
    for (std::int64_t b = 0; b < blocks; ++b) {
      if (got_scales[b] != scales[b]) {
        return where(rank, row, src, token) + " scale block " + std::to_string(b) + ": " +
               std::to_string(got_scales[b]) + ", expected " + std::to_string(scales[b]);
      }
    }
    return "";
  }
  scratch.resize(hidden * 2);
  auto* expected = reinterpret_cast<std::uint16_t*>(scratch.data());
  fill_bf16_row(src, token, hidden, expected);
  const auto* values = got.recv_x.data_as<std::uint16_t>() + row * hidden;
  if (std::memcmp(values, expected, hidden * 2) == 0) return "";
  for (std::int64_t c = 0; c < hidden; ++c) {
    if (values[c] != expected[c]) {
      return where(rank, row, src, token) + " column " + std::to_string(c) + ": " +
             std::to_string(bf16_value(values[c])) + ", expected " + std::to_string(bf16_value(expected[c]));
    }
  }
  return "";
}

}  // namespace

std::string check_dispatch(const RoutingSpec& spec, const std::vector<Routing>& routings, int rank,
                           std::int64_t hidden, bool fp8, const DispatchResult& got) {
  const std::int64_t per_rank = spec.experts_per_rank();
  const std::int64_t first = rank * per_rank;
  const int K = spec.topk;
  auto local_of = [&](std::int64_t expert) { return expert >= first && expert < first + per_rank; };

  // Expected sources in the order ferry promises: (source rank, source token) ascending.
  std::vector<std::pair<int, std::int64_t>> sources;
  std::vector<std::int64_t> per_expert(per_rank, 0);
  for (int src = 0; src < spec.num_ranks; ++src) {
    for (std::int64_t t = 0; t < spec.num_tokens; ++t) {
      bool mine = false;
      for (int k = 0; k < K; ++k) {
        const std::int64_t e = routings[src].topk_idx[t * K + k];
        if (local_of(e)) {
          mine = true;
          ++per_expert[e - first];
        }
      }
      if (mine) sources.emplace_back(src, t);
    }
  }
  const std::string me = "rank " + std::to_string(rank);
  if (got.num_recv_tokens != static_cast<std::int64_t>(sources.size())) {
    return me + ": received " + std::to_string(got.num_recv_tokens) + " tokens, expected " +
           std::to_string(sources.size());
  }
  if (got.tokens_per_local_expert != per_expert) {
    for (std::int64_t e = 0; e < per_rank; ++e) {
      const std::int64_t value = e < static_cast<std::int64_t>(got.tokens_per_local_expert.size())
                                     ? got.tokens_per_local_expert[e]
                                     : -1;
      if (value != per_expert[e]) {
        return me + " local expert " + std::to_string(e) + ": tokens_per_local_expert " +
               std::to_string(value) + ", expected " + std::to_string(per_expert[e]);
      }
    }
    return me + ": tokens_per_local_expert has " + std::to_string(got.tokens_per_local_expert.size()) +
           " entries, expected " + std::to_string(per_rank);
  }
  const auto src_rank = got.handle.recv_src_rank();
  const auto src_token = got.handle.recv_src_token();
  const auto* topk = got.recv_topk_idx.data_as<std::int64_t>();
  const auto* weights = got.recv_topk_weights.data_as<float>();
  std::vector<std::uint8_t> scratch;
  std::vector<float> scales;
  for (std::size_t row = 0; row < sources.size(); ++row) {
    const auto [src, token] = sources[row];
    const auto r = static_cast<std::int64_t>(row);
    if (src_rank[row] != src || src_token[row] != token) {
      return me + " row " + std::to_string(row) + ": from source rank " + std::to_string(src_rank[row]) +
             " token " + std::to_string(src_token[row]) + ", expected rank " + std::to_string(src) +
             " token " + std::to_string(token);
    }
    for (int k = 0; k < K; ++k) {
      const std::int64_t e = routings[src].topk_idx[token * K + k];
      const std::int64_t want_idx = local_of(e) ? e - first : -1;
      const float want_weight = local_of(e) ? routings[src].topk_weights[token * K + k] : 0.0f;
      if (topk[r * K + k] != want_idx || weights[r * K + k] != want_weight) {
        return where(rank, r, src, token) + " topk slot " + std::to_string(k) + ": idx " +
               std::to_string(topk[r * K + k]) + " weight " + std::to_string(weights[r * K + k]) +
               ", expected idx " + std::to_string(want_idx) + " weight " + std::to_string(want_weight);
      }
    }
    std::string error = check_values(rank, r, src, token, hidden, fp8, got, scratch, scales);
    if (!error.empty()) return error;
  }
  return "";
}

std::string check_combine(const RoutingSpec& spec, const Routing& routing, int rank, std::int64_t hidden,
                          const Tensor& out) {
  const auto* values = out.data_as<std::uint16_t>();
  for (std::int64_t t = 0; t < routing.num_tokens; ++t) {
    const int copies = distinct_ranks(spec, &routing.topk_idx[t * routing.topk]);
    for (std::int64_t c = 0; c < hidden; ++c) {
      const float want = row_value(rank, t, c) * static_cast<float>(copies);
      const float have = bf16_value(values[t * hidden + c]);
      if (have != want) {
        return "rank " + std::to_string(rank) + " combine out row " + std::to_string(t) + " column " +
               std::to_string(c) + ": " + std::to_string(have) + ", expected " + std::to_string(want) +
               " (x * " + std::to_string(copies) + " receiving ranks)";
      }
    }
  }
  return "";
}

}  // namespace ferry::bench
