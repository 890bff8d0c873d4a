#include "reference.hpp"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "ferry/kernels/protocol/numeric.hpp"

namespace ferry::test {

namespace p = kernels::protocol;

bool Scenario::token_in_rank(int source, std::int64_t token, int rank) const {
  const RankData& data = ranks[source];
  for (int k = 0; k < num_topk; ++k) {
    std::int64_t expert = data.topk[token * num_topk + k];
    if (expert >= 0 && rank_of_expert(expert) == rank) return true;
  }
  return false;
}

std::uint64_t Scenario::token_nodes(int source, std::int64_t token) const {
  std::uint64_t nodes = 0;
  for (int k = 0; k < num_topk; ++k) {
    std::int64_t expert = ranks[source].topk[token * num_topk + k];
    if (expert >= 0) nodes |= std::uint64_t{1} << (rank_of_expert(expert) / local_size);
  }
  return nodes;
}

namespace {

std::int64_t draw(std::mt19937_64& rng, std::int64_t low, std::int64_t high) {
  return std::uniform_int_distribution<std::int64_t>(low, high)(rng);
}

// A row of K expert ids confined to at most max_nodes nodes.
void route_token(const ScenarioShape& shape, const Scenario& scenario, std::mt19937_64& rng,
                 std::int64_t* row) {
  int N = scenario.num_nodes;
  int span = static_cast<int>(draw(rng, 1, std::min(N, shape.max_nodes)));
  std::vector<int> nodes(N);
  for (int n = 0; n < N; ++n) nodes[n] = n;
  std::shuffle(nodes.begin(), nodes.end(), rng);
  nodes.resize(span);
  std::int64_t per_node = scenario.experts_per_rank() * scenario.local_size;
  double empty = shape.style == RoutingStyle::sparse ? 0.7 : 0.1;
  std::bernoulli_distribution is_empty(empty);
  std::bernoulli_distribution hot(0.7);
  for (int k = 0; k < scenario.num_topk; ++k) {
    if (is_empty(rng)) {
      row[k] = -1;
      continue;
    }
    std::int64_t expert = -1;
    for (int attempt = 0; attempt < 8; ++attempt) {  // distinct experts, as a gate gives (rarely a repeat)
      if (shape.style == RoutingStyle::skewed && hot(rng)) {
        expert = draw(rng, 0, scenario.experts_per_rank() - 1);
      } else {
        int node = nodes[draw(rng, 0, span - 1)];
        expert = node * per_node + draw(rng, 0, per_node - 1);
      }
      if (std::find(row, row + k, expert) == row + k) break;
    }
    if (std::find(row, row + k, expert) != row + k) expert = -1;  // a gate never names an expert twice
    // The skewed draw may add node 0 beyond the span; keep the limit by falling back to the span's nodes.
    if (shape.style == RoutingStyle::skewed) {
      std::uint64_t used = 0;
      for (int j = 0; j < k; ++j) {
        if (row[j] >= 0) used |= std::uint64_t{1} << (row[j] / per_node);
      }
      if (expert >= 0) {  // -1 / per_node is -1 when a node holds one expert: no shift by a negative count
        used |= std::uint64_t{1} << (expert / per_node);
        if (__builtin_popcountll(used) > shape.max_nodes) expert = -1;
      }
    }
    row[k] = expert;
  }
}

float random_value(std::mt19937_64& rng) {
  return std::uniform_real_distribution<float>(-4.0f, 4.0f)(rng);
}

}  // namespace

void fill_rows(Scenario& scenario, std::mt19937_64& rng) {
  std::int64_t H = scenario.hidden;
  for (RankData& data : scenario.ranks) {
    data.x.assign(data.num_tokens * scenario.row_bytes(), 0);
    for (std::int64_t i = 0; i < data.num_tokens * H; ++i) {
      switch (scenario.dtype) {
        case DType::bf16: {
          std::uint16_t bits = p::float_to_bf16(random_value(rng));
          std::memcpy(&data.x[i * 2], &bits, 2);
          break;
        }
        case DType::fp32: {
          float value = random_value(rng);
          std::memcpy(&data.x[i * 4], &value, 4);
          break;
        }
        case DType::fp8_e4m3:
          data.x[i] = p::float_to_e4m3(random_value(rng) * 100.0f);
          break;
        default:
          break;
      }
    }
    data.scales.clear();
    if (scenario.dtype == DType::fp8_e4m3) {
      data.scales.resize(data.num_tokens * scenario.scale_blocks());
      for (float& scale : data.scales) scale = std::uniform_real_distribution<float>(0.001f, 0.1f)(rng);
    }
  }
}

ScenarioShape two_node_shape(int local_size) {
  ScenarioShape shape;
  shape.num_nodes = 2;
  shape.local_size = local_size;
  shape.experts_per_rank = 2;
  shape.num_topk = 4;
  shape.hidden = 96;
  shape.max_tokens = 40;
  shape.max_nodes = 2;
  return shape;
}

Scenario make_scenario(const ScenarioShape& shape, std::mt19937_64& rng) {
  Scenario scenario;
  scenario.num_nodes = shape.num_nodes;
  scenario.local_size = shape.local_size;
  scenario.num_experts = static_cast<std::int64_t>(shape.experts_per_rank) * scenario.num_ranks();
  scenario.num_topk = shape.num_topk;
  scenario.hidden = shape.hidden;
  scenario.dtype = shape.dtype;
  scenario.ranks.resize(scenario.num_ranks());
  for (RankData& data : scenario.ranks) {
    data.num_tokens = draw(rng, 0, shape.max_tokens);
    data.topk.assign(data.num_tokens * shape.num_topk, -1);
    data.weights.assign(data.num_tokens * shape.num_topk, 0.0f);
    for (std::int64_t t = 0; t < data.num_tokens; ++t) {
      route_token(shape, scenario, rng, &data.topk[t * shape.num_topk]);
      for (int k = 0; k < shape.num_topk; ++k) {
        data.weights[t * shape.num_topk + k] = std::uniform_real_distribution<float>(0.0f, 1.0f)(rng);
      }
    }
  }
  fill_rows(scenario, rng);
  return scenario;
}

Scenario make_scenario_receiving(const ScenarioShape& shape, std::mt19937_64& rng, std::size_t rows) {
  for (int attempt = 0; attempt < 100; ++attempt) {
    Scenario scenario = make_scenario(shape, rng);
    for (const auto& received : expected_sources(scenario)) {
      if (received.size() >= rows) return scenario;
    }
  }
  throw std::runtime_error("no scenario in 100 draws has a rank that receives " + std::to_string(rows) +
                           " rows: the shape cannot give the case this test needs");
}

std::vector<std::vector<Source>> expected_sources(const Scenario& scenario) {
  std::vector<std::vector<Source>> sources(scenario.num_ranks());
  for (int r = 0; r < scenario.num_ranks(); ++r) {
    for (int s = 0; s < scenario.num_ranks(); ++s) {
      for (std::int64_t t = 0; t < scenario.ranks[s].num_tokens; ++t) {
        if (scenario.token_in_rank(s, t, r)) sources[r].push_back({s, t});
      }
    }
  }
  return sources;
}

std::vector<std::vector<std::uint8_t>> make_results(const Scenario& scenario,
                                                    const std::vector<std::vector<Source>>& sources,
                                                    DType dtype, std::int64_t rows_per_rank_min,
                                                    std::mt19937_64& rng) {
  std::vector<std::vector<std::uint8_t>> results(scenario.num_ranks());
  std::size_t row_bytes = scenario.hidden * element_size(dtype);
  for (int r = 0; r < scenario.num_ranks(); ++r) {
    std::int64_t rows =
        std::max<std::int64_t>(static_cast<std::int64_t>(sources[r].size()), rows_per_rank_min);
    results[r].assign(rows * row_bytes, 0);
    auto kind = dtype == DType::fp32 ? p::PayloadKind::fp32 : p::PayloadKind::bf16;
    for (std::int64_t i = 0; i < rows * scenario.hidden; ++i) {
      p::store_element(kind, results[r].data(), i, random_value(rng));
    }
  }
  return results;
}

namespace {

// row_of[r][s][t]: the row of source s's token t at receiver r, or -1.
std::vector<std::vector<std::vector<std::int64_t>>> rows_by_source(
    const Scenario& scenario, const std::vector<std::vector<Source>>& sources) {
  const int R = scenario.num_ranks();
  std::vector<std::vector<std::vector<std::int64_t>>> row_of(R, std::vector<std::vector<std::int64_t>>(R));
  for (int r = 0; r < R; ++r) {
    for (int s = 0; s < R; ++s) row_of[r][s].assign(scenario.ranks[s].num_tokens, -1);
    for (std::size_t i = 0; i < sources[r].size(); ++i)
      row_of[r][sources[r][i].rank][sources[r][i].token] = i;
  }
  return row_of;
}

}  // namespace

std::vector<std::vector<float>> expected_combined_weights(const Scenario& scenario,
                                                          const std::vector<std::vector<Source>>& sources,
                                                          const std::vector<std::vector<float>>& weights) {
  const int K = scenario.num_topk;
  auto row_of = rows_by_source(scenario, sources);
  std::vector<std::vector<float>> out(scenario.num_ranks());
  for (int s = 0; s < scenario.num_ranks(); ++s) {
    out[s].assign(scenario.ranks[s].num_tokens * K, 0.0f);
    for (std::int64_t t = 0; t < scenario.ranks[s].num_tokens; ++t) {
      for (int k = 0; k < K; ++k) {
        float total = 0.0f;
        for (int n = 0; n < scenario.num_nodes; ++n) {
          float partial = 0.0f;
          bool touched = false;
          for (int l = 0; l < scenario.local_size; ++l) {
            const int r = n * scenario.local_size + l;
            const std::int64_t row = row_of[r][s][t];
            if (row < 0) continue;
            touched = true;
            partial += weights[r][row * K + k];
          }
          if (touched) total += partial;
        }
        out[s][t * K + k] = total;
      }
    }
  }
  return out;
}

std::vector<std::vector<std::uint8_t>> expected_combine(const Scenario& scenario,
                                                        const std::vector<std::vector<Source>>& sources,
                                                        const std::vector<std::vector<std::uint8_t>>& results,
                                                        DType dtype,
                                                        const std::vector<std::vector<std::uint8_t>>* bias) {
  auto kind = dtype == DType::fp32 ? p::PayloadKind::fp32 : p::PayloadKind::bf16;
  std::int64_t H = scenario.hidden;
  std::size_t row_bytes = H * element_size(dtype);
  int R = scenario.num_ranks();
  auto row_of = rows_by_source(scenario, sources);
  std::vector<std::vector<std::uint8_t>> out(R);
  std::vector<std::uint8_t> partial(row_bytes);
  for (int s = 0; s < R; ++s) {
    out[s].assign(scenario.ranks[s].num_tokens * row_bytes, 0);
    for (std::int64_t t = 0; t < scenario.ranks[s].num_tokens; ++t) {
      std::vector<float> total(H, 0.0f);
      if (bias != nullptr) {
        for (std::int64_t h = 0; h < H; ++h)
          total[h] = p::load_element(kind, (*bias)[s].data() + t * row_bytes, h);
      }
      for (int n = 0; n < scenario.num_nodes; ++n) {
        std::vector<float> sum(H, 0.0f);
        bool touched = false;
        for (int l = 0; l < scenario.local_size; ++l) {
          int r = n * scenario.local_size + l;
          std::int64_t row = row_of[r][s][t];
          if (row < 0) continue;
          touched = true;
          for (std::int64_t h = 0; h < H; ++h)
            sum[h] += p::load_element(kind, results[r].data() + row * row_bytes, h);
        }
        if (!touched) continue;
        for (std::int64_t h = 0; h < H; ++h)
          p::store_element(kind, partial.data(), h, sum[h]);  // the forwarder rounds
        for (std::int64_t h = 0; h < H; ++h) total[h] += p::load_element(kind, partial.data(), h);
      }
      for (std::int64_t h = 0; h < H; ++h) p::store_element(kind, out[s].data() + t * row_bytes, h, total[h]);
    }
  }
  return out;
}

ExpectedTraffic expected_traffic(const Scenario& scenario) {
  ExpectedTraffic traffic;
  for (int s = 0; s < scenario.num_ranks(); ++s) {
    int own = s / scenario.local_size;
    for (std::int64_t t = 0; t < scenario.ranks[s].num_tokens; ++t) {
      std::uint64_t nodes = scenario.token_nodes(s, t);
      traffic.fabric += __builtin_popcountll(nodes & ~(std::uint64_t{1} << own));
      for (int r = 0; r < scenario.num_ranks(); ++r) traffic.within_node += scenario.token_in_rank(s, t, r);
    }
  }
  return traffic;
}

}  // namespace ferry::test
