#include "low_latency_reference.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

#include "ferry/kernels/protocol/numeric.hpp"

namespace ferry::test {

namespace p = kernels::protocol;

std::size_t LowLatencyScenario::bytes_hint() const {
  return get_low_latency_rdma_size_hint(max_tokens, hidden, num_ranks(), num_experts);
}

TensorView LowLatencyScenario::x(int rank) const {
  const LowLatencyRank& data = ranks[rank];
  return TensorView(data.x.data(), {data.num_tokens, hidden}, DType::bf16);
}
TensorView LowLatencyScenario::topk(int rank) const {
  const LowLatencyRank& data = ranks[rank];
  return TensorView(data.topk.data(), {data.num_tokens, num_topk}, DType::int64);
}
TensorView LowLatencyScenario::weights(int rank) const {
  const LowLatencyRank& data = ranks[rank];
  return TensorView(data.weights.data(), {data.num_tokens, num_topk}, DType::fp32);
}

namespace {

// bf16 values of every magnitude a decode activation has, some blocks all zero (the amax floor), some huge.
std::uint16_t random_bf16(std::mt19937_64& rng, float block_scale) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  return p::float_to_bf16(normal(rng) * block_scale);
}

}  // namespace

LowLatencyScenario make_low_latency_scenario(const LowLatencyShapeSpec& spec, std::mt19937_64& rng) {
  LowLatencyScenario scenario;
  scenario.num_nodes = spec.num_nodes;
  scenario.local_size = spec.local_size;
  scenario.max_tokens = spec.max_tokens;
  scenario.hidden = spec.hidden;
  scenario.num_experts = static_cast<std::int64_t>(spec.experts_per_rank) * scenario.num_ranks();
  scenario.num_topk = spec.num_topk;
  const std::int64_t E = scenario.num_experts;
  const int K = spec.num_topk;
  for (int r = 0; r < scenario.num_ranks(); ++r) {
    LowLatencyRank data;
    data.num_tokens = static_cast<std::int64_t>(rng() % (spec.max_tokens + 1));
    if (spec.routing == LowLatencyRouting::one_expert) data.num_tokens = spec.max_tokens;
    const std::int64_t T = data.num_tokens;
    data.x.resize(T * spec.hidden);
    for (std::int64_t t = 0; t < T; ++t) {
      for (std::int64_t b = 0; b * 128 < spec.hidden; ++b) {
        const int kind = static_cast<int>(rng() % 8);
        const float block_scale = kind == 0 ? 0.0f : kind == 1 ? 3000.0f : kind == 2 ? 1e-3f : 1.0f;
        for (std::int64_t i = b * 128; i < std::min<std::int64_t>(spec.hidden, (b + 1) * 128); ++i)
          data.x[t * spec.hidden + i] = random_bf16(rng, block_scale);
      }
    }
    data.topk.assign(T * K, -1);
    data.weights.assign(T * K, 0.0f);
    std::uniform_real_distribution<float> weight(0.0f, 1.0f);
    for (std::int64_t t = 0; t < T; ++t) {
      const bool none = spec.routing != LowLatencyRouting::one_expert && rng() % 16 == 0;
      std::vector<std::int64_t> experts(E);
      for (std::int64_t e = 0; e < E; ++e) experts[e] = e;
      std::shuffle(experts.begin(), experts.end(), rng);
      if (spec.routing == LowLatencyRouting::one_expert) {
        std::iter_swap(experts.begin(), std::find(experts.begin(), experts.end(), 0));
      }
      for (int k = 0; k < K; ++k) {
        data.weights[t * K + k] = weight(rng);
        if (none || k >= E) continue;
        const bool empty = spec.routing != LowLatencyRouting::one_expert && rng() % 10 == 0;
        data.topk[t * K + k] = empty ? -1 : experts[k];
      }
    }
    scenario.ranks.push_back(std::move(data));
  }
  return scenario;
}

std::vector<std::vector<LowLatencyRow>> expected_low_latency_rows(const LowLatencyScenario& scenario,
                                                                  int rank, const Masked& masked) {
  const std::int64_t L = scenario.local_experts();
  std::vector<std::vector<LowLatencyRow>> rows(L);
  for (int source = 0; source < scenario.num_ranks(); ++source) {
    if (masked[source]) continue;
    const LowLatencyRank& data = scenario.ranks[source];
    for (std::int64_t t = 0; t < data.num_tokens; ++t) {
      for (int k = 0; k < scenario.num_topk; ++k) {
        const std::int64_t expert = data.topk[t * scenario.num_topk + k];
        if (expert >= 0 && scenario.rank_of(expert) == rank) rows[expert % L].push_back({source, t});
      }
    }
  }
  return rows;
}

void reference_fp8_row(const std::uint16_t* x, std::int64_t hidden, bool round_scale,
                       std::vector<std::uint8_t>& out, std::vector<float>& scales) {
  out.assign(hidden, 0);
  scales.assign((hidden + 127) / 128, 0.0f);
  for (std::int64_t b = 0; b * 128 < hidden; ++b) {
    const std::int64_t end = std::min<std::int64_t>(hidden, (b + 1) * 128);
    float amax = 1e-4f;
    for (std::int64_t i = b * 128; i < end; ++i) {
      const float value = std::fabs(p::bf16_to_float(x[i]));
      if (value > amax) amax = value;
    }
    float scale = 448.0f / amax;
    float scale_inv = amax * (1.0f / 448.0f);
    if (round_scale) {
      int exponent = 0;
      const float mantissa = std::frexp(scale_inv, &exponent);    // scale_inv = mantissa * 2^exponent
      const int up = mantissa == 0.5f ? exponent - 1 : exponent;  // ceil(log2(scale_inv))
      scale_inv = std::ldexp(1.0f, up);
      scale = std::ldexp(1.0f, -up);
    }
    scales[b] = scale_inv;
    for (std::int64_t i = b * 128; i < end; ++i) out[i] = p::float_to_e4m3(p::bf16_to_float(x[i]) * scale);
  }
}

namespace {

std::string where(int rank, std::int64_t expert, std::int64_t row) {
  return "rank " + std::to_string(rank) + " local expert " + std::to_string(expert) + " row " +
         std::to_string(row);
}

}  // namespace

std::string check_low_latency_dispatch(const LowLatencyScenario& scenario, int rank, const Masked& masked,
                                       const DispatchFlags& flags, const LowLatencyDispatchResult& got) {
  const auto expected = expected_low_latency_rows(scenario, rank, masked);
  const std::int64_t L = scenario.local_experts();
  const std::int64_t rows = scenario.rows_per_expert();
  const std::int64_t H = scenario.hidden;
  const std::int64_t blocks = (H + 127) / 128;
  const int R = scenario.num_ranks();
  if (got.recv_x.dim() != 3 || got.recv_x.size(0) != L || got.recv_x.size(1) != rows ||
      got.recv_x.size(2) != H)
    return "rank " + std::to_string(rank) + ": recv_x is " + got.recv_x.view().describe();
  const auto* counts = got.recv_count.data_as<const std::int32_t>();
  const auto* src_info = got.handle.packed_recv_src_info().data_as<const std::int32_t>();
  const auto* ranges = got.handle.packed_recv_layout_range().data_as<const std::int64_t>();
  const std::size_t row_bytes = static_cast<std::size_t>(H) * (flags.fp8 ? 1 : 2);
  std::vector<std::uint8_t> fp8;
  std::vector<float> scales;
  for (std::int64_t e = 0; e < L; ++e) {
    const auto& want = expected[e];
    if (counts[e] != static_cast<std::int32_t>(want.size())) {
      return "rank " + std::to_string(rank) + " local expert " + std::to_string(e) + ": recv_count " +
             std::to_string(counts[e]) + ", expected " + std::to_string(want.size());
    }
    std::int64_t begin = 0;
    for (int s = 0; s < R; ++s) {
      std::int64_t count = 0;
      for (const LowLatencyRow& row : want) count += row.source == s ? 1 : 0;
      const std::int64_t range = ranges[e * R + s];
      if (static_cast<std::uint64_t>(range) >> 32 != static_cast<std::uint64_t>(begin) ||
          (range & 0xffffffff) != count) {
        return "rank " + std::to_string(rank) + " local expert " + std::to_string(e) + " source " +
               std::to_string(s) + ": layout range (" +
               std::to_string(static_cast<std::uint64_t>(range) >> 32) + ", " +
               std::to_string(range & 0xffffffff) + "), expected (" + std::to_string(begin) + ", " +
               std::to_string(count) + ")";
      }
      begin += count;
    }
    for (std::size_t i = 0; i < want.size(); ++i) {
      const LowLatencyRow& row = want[i];
      const std::int64_t packed = e * rows + static_cast<std::int64_t>(i);
      if (src_info[packed] != row.token) {
        return where(rank, e, i) + ": source token " + std::to_string(src_info[packed]) + ", expected " +
               std::to_string(row.token) + " of rank " + std::to_string(row.source);
      }
      const std::uint16_t* x = scenario.ranks[row.source].x.data() + row.token * H;
      const auto* bytes = static_cast<const std::uint8_t*>(got.recv_x.data()) + packed * row_bytes;
      if (!flags.fp8) {
        if (std::memcmp(bytes, x, row_bytes) != 0)
          return where(rank, e, i) + ": bf16 row differs from the source";
        continue;
      }
      reference_fp8_row(x, H, flags.round_scale, fp8, scales);
      for (std::int64_t j = 0; j < H; ++j) {
        if (bytes[j] != fp8[j]) {
          return where(rank, e, i) + " element " + std::to_string(j) + ": e4m3 " + std::to_string(bytes[j]) +
                 ", expected " + std::to_string(fp8[j]);
        }
      }
      for (std::int64_t b = 0; b < blocks; ++b) {
        if (flags.ue8m0) {
          const auto* packs = static_cast<const std::uint8_t*>(got.recv_x_scales.data());
          const std::uint8_t byte =
              packs[((e * ((blocks + 3) / 4) + b / 4) * rows + static_cast<std::int64_t>(i)) * 4 + b % 4];
          std::uint32_t bits = 0;
          std::memcpy(&bits, &scales[b], 4);
          if (byte != (bits >> 23)) {
            return where(rank, e, i) + " block " + std::to_string(b) + ": ue8m0 " + std::to_string(byte) +
                   ", expected " + std::to_string(bits >> 23);
          }
        } else {
          const float value =
              got.recv_x_scales
                  .data_as<const float>()[(e * blocks + b) * rows + static_cast<std::int64_t>(i)];
          if (value != scales[b]) {
            return where(rank, e, i) + " block " + std::to_string(b) + ": scale " + std::to_string(value) +
                   ", expected " + std::to_string(scales[b]);
          }
        }
      }
    }
  }
  return "";
}

std::vector<std::uint16_t> expert_output(std::int64_t expert, int source, std::int64_t token,
                                         std::int64_t hidden) {
  std::uint64_t state =
      (static_cast<std::uint64_t>(expert) * 1000003u + static_cast<std::uint64_t>(source)) * 2654435761u +
      static_cast<std::uint64_t>(token) * 40503u + 1;
  std::vector<std::uint16_t> row(hidden);
  for (std::int64_t i = 0; i < hidden; ++i) {
    state = state * 6364136223846793005ull + 1442695040888963407ull;
    const float value = static_cast<float>(static_cast<std::int64_t>(state >> 40) - (1 << 23)) / (1 << 22);
    row[i] = p::float_to_bf16(value);
  }
  return row;
}

void fill_expert_outputs(const LowLatencyScenario& scenario, int rank, const LowLatencyDispatchResult& got,
                         std::uint16_t* y) {
  const std::int64_t L = scenario.local_experts();
  const std::int64_t rows = scenario.rows_per_expert();
  const std::int64_t H = scenario.hidden;
  const int R = scenario.num_ranks();
  std::memset(y, 0, static_cast<std::size_t>(L * rows * H) * 2);
  const auto* ranges = got.handle.packed_recv_layout_range().data_as<const std::int64_t>();
  const auto* src_info = got.handle.packed_recv_src_info().data_as<const std::int32_t>();
  for (std::int64_t e = 0; e < L; ++e) {
    for (int s = 0; s < R; ++s) {
      const std::int64_t begin =
          static_cast<std::int64_t>(static_cast<std::uint64_t>(ranges[e * R + s]) >> 32);
      const std::int64_t count = ranges[e * R + s] & 0xffffffff;
      for (std::int64_t i = begin; i < begin + count; ++i) {
        const auto row = expert_output(rank * L + e, s, src_info[e * rows + i], H);
        std::memcpy(y + (e * rows + i) * H, row.data(), static_cast<std::size_t>(H) * 2);
      }
    }
  }
}

std::vector<std::uint16_t> expected_low_latency_combine(const LowLatencyScenario& scenario, int rank,
                                                        const Masked& masked) {
  const LowLatencyRank& data = scenario.ranks[rank];
  const std::int64_t H = scenario.hidden;
  const int K = scenario.num_topk;
  std::vector<std::uint16_t> out(data.num_tokens * H);
  std::vector<float> acc(H);
  for (std::int64_t t = 0; t < data.num_tokens; ++t) {
    std::fill(acc.begin(), acc.end(), 0.0f);
    for (int k = 0; k < K; ++k) {
      const std::int64_t expert = data.topk[t * K + k];
      if (expert < 0 || masked[scenario.rank_of(expert)]) continue;
      const auto row = expert_output(expert, rank, t, H);
      const float weight = data.weights[t * K + k];
      for (std::int64_t i = 0; i < H; ++i) {
        const float product = weight * p::bf16_to_float(row[i]);
        acc[i] = acc[i] + product;
      }
    }
    for (std::int64_t i = 0; i < H; ++i) out[t * H + i] = p::float_to_bf16(acc[i]);
  }
  return out;
}

std::string check_low_latency_combine(const LowLatencyScenario& scenario, int rank, const Masked& masked,
                                      const std::uint16_t* got) {
  const auto want = expected_low_latency_combine(scenario, rank, masked);
  const std::int64_t H = scenario.hidden;
  for (std::size_t i = 0; i < want.size(); ++i) {
    if (got[i] == want[i]) continue;
    return "rank " + std::to_string(rank) + " token " + std::to_string(i / H) + " element " +
           std::to_string(i % H) + ": combined " + std::to_string(p::bf16_to_float(got[i])) + ", expected " +
           std::to_string(p::bf16_to_float(want[i]));
  }
  return "";
}

}  // namespace ferry::test
