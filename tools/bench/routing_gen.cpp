// Node-limited routing generator: see routing_gen.hpp.
#include "bench/routing_gen.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>
#include <string>

namespace ferry::bench {
namespace {

// splitmix64: tiny, fast and the same on every platform and standard library (std distributions are not).
class SplitMix {
 public:
  explicit SplitMix(std::uint64_t seed) : state_(seed) {}
  std::uint64_t next() {
    std::uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in (0, 1]: never 0, so log() stays finite.
  double unit() { return (static_cast<double>(next() >> 11) + 1.0) * (1.0 / 9007199254740992.0); }

 private:
  std::uint64_t state_;
};

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

// Weighted sampling without replacement (Efraimidis-Spirakis): the `count` candidates with the largest
// log(u) / weight. Ties cannot change the result order: candidates keep their index order in the sort.
void pick_weighted(SplitMix& rng, const std::vector<std::int64_t>& candidates,
                   const std::vector<double>& weights, int count, std::vector<std::int64_t>& picked) {
  std::vector<std::pair<double, std::int64_t>> keys;
  keys.reserve(candidates.size());
  for (std::size_t i = 0; i < candidates.size(); ++i) {
    keys.emplace_back(std::log(rng.unit()) / weights[i], candidates[i]);
  }
  std::stable_sort(keys.begin(), keys.end(), [](const auto& a, const auto& b) { return a.first > b.first; });
  picked.clear();
  for (int i = 0; i < count; ++i) picked.push_back(keys[i].second);
}

}  // namespace

void validate(const RoutingSpec& spec) {
  // Named as the benchmarks' flags name them (ferry bench dispatch|combine, ferry-alltoallv).
  require(spec.num_tokens >= 0, "--tokens must be >= 0, not " + std::to_string(spec.num_tokens));
  require(spec.num_ranks >= 1, "ranks must be >= 1, not " + std::to_string(spec.num_ranks));
  require(spec.local_size >= 1 && spec.num_ranks % spec.local_size == 0,
          "ranks per node (" + std::to_string(spec.local_size) + ") must divide the ranks (" +
              std::to_string(spec.num_ranks) + ")");
  require(spec.num_experts >= spec.num_ranks && spec.num_experts % spec.num_ranks == 0,
          "--experts " + std::to_string(spec.num_experts) + " must be a positive multiple of the job's " +
              std::to_string(spec.num_ranks) + " rank(s)");
  require(spec.max_nodes >= 1, "--max-nodes must be >= 1, not " + std::to_string(spec.max_nodes));
  require(spec.topk >= 1, "--topk must be >= 1, not " + std::to_string(spec.topk));
  const int nodes = std::min(spec.max_nodes, spec.num_nodes());
  const std::int64_t reachable = nodes * spec.experts_per_node();
  require(spec.topk <= reachable,
          "--topk " + std::to_string(spec.topk) + " exceeds the " + std::to_string(reachable) +
              " experts of the " + std::to_string(nodes) + " node(s) a token may use (--experts " +
              std::to_string(spec.num_experts) + " over " + std::to_string(spec.num_ranks) +
              " rank(s), --max-nodes " + std::to_string(spec.max_nodes) + ")");
  require(spec.skew >= 0 && std::isfinite(spec.skew), "--skew must be finite and >= 0");
}

float routing_weight(int slot) {
  return static_cast<float>(1 + slot % 8) * 0.0625f;
}

Routing generate_routing(const RoutingSpec& spec, int rank) {
  validate(spec);
  require(rank >= 0 && rank < spec.num_ranks, "rank " + std::to_string(rank) + " is outside the job");
  const int num_nodes = spec.num_nodes();
  const int nodes_per_token = std::min(spec.max_nodes, num_nodes);
  const std::int64_t per_node = spec.experts_per_node();

  std::vector<double> expert_weight(spec.num_experts);
  for (std::int64_t e = 0; e < spec.num_experts; ++e) expert_weight[e] = std::pow(double(e + 1), -spec.skew);
  std::vector<double> node_weight(num_nodes, 0.0);
  for (std::int64_t e = 0; e < spec.num_experts; ++e) node_weight[e / per_node] += expert_weight[e];
  std::vector<std::int64_t> all_nodes(num_nodes);
  std::iota(all_nodes.begin(), all_nodes.end(), 0);

  // One independent stream per (seed, rank): mixing the rank through the generator keeps streams apart.
  SplitMix rng(SplitMix(spec.seed ^ (0x5bd1e995ull * (static_cast<std::uint64_t>(rank) + 1))).next());
  Routing routing;
  routing.num_tokens = spec.num_tokens;
  routing.topk = spec.topk;
  routing.topk_idx.resize(static_cast<std::size_t>(spec.num_tokens) * spec.topk);
  routing.topk_weights.resize(routing.topk_idx.size());
  std::vector<std::int64_t> nodes, candidates, experts;
  std::vector<double> candidate_weight;
  for (std::int64_t t = 0; t < spec.num_tokens; ++t) {
    pick_weighted(rng, all_nodes, node_weight, nodes_per_token, nodes);
    candidates.clear();
    candidate_weight.clear();
    for (std::int64_t node : nodes) {
      for (std::int64_t e = node * per_node; e < (node + 1) * per_node; ++e) {
        candidates.push_back(e);
        candidate_weight.push_back(expert_weight[e]);
      }
    }
    pick_weighted(rng, candidates, candidate_weight, spec.topk, experts);
    for (int k = 0; k < spec.topk; ++k) {
      routing.topk_idx[t * spec.topk + k] = experts[k];
      routing.topk_weights[t * spec.topk + k] = routing_weight(k);
    }
  }
  return routing;
}

namespace {
int count_distinct(const std::int64_t* experts, int topk, std::int64_t group_size) {
  int distinct = 0;
  for (int k = 0; k < topk; ++k) {
    if (experts[k] < 0) continue;
    bool seen = false;
    for (int j = 0; j < k && !seen; ++j)
      seen = experts[j] >= 0 && experts[j] / group_size == experts[k] / group_size;
    distinct += seen ? 0 : 1;
  }
  return distinct;
}
}  // namespace

int distinct_nodes(const RoutingSpec& spec, const std::int64_t* token_experts) {
  return count_distinct(token_experts, spec.topk, spec.experts_per_node());
}

int distinct_ranks(const RoutingSpec& spec, const std::int64_t* token_experts) {
  return count_distinct(token_experts, spec.topk, spec.experts_per_rank());
}

}  // namespace ferry::bench
