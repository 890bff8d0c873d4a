// Per-token routing facts, computed from one row of topk_idx (K expert ids, -1 = empty slot).
//
// Experts are split evenly over ranks: rank r owns experts [r * E/R, (r+1) * E/R). From a row we derive the
// nodes the token touches (a 64-bit mask), and for one node the local ranks there that hold one of its
// experts (a 32-bit mask): the bitmask a dispatch message carries so the forwarder knows whom to copy it to.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ferry/kernels/protocol/hd.hpp"
#include "ferry/kernels/protocol/topology.hpp"

namespace ferry::kernels::protocol {

struct ExpertSplit {
  std::int64_t num_experts = 0;
  std::int64_t experts_per_rank = 0;

  FERRY_HD int rank_of(std::int64_t expert) const { return static_cast<int>(expert / experts_per_rank); }
  FERRY_HD bool valid(std::int64_t expert) const { return expert >= 0 && expert < num_experts; }
  // Expert id local to `rank`, or -1 when `expert` lives elsewhere (or is -1).
  FERRY_HD std::int64_t local_id(std::int64_t expert, int rank) const {
    std::int64_t first = rank * experts_per_rank;
    return expert >= first && expert < first + experts_per_rank ? expert - first : -1;
  }
};

struct TokenRoute {
  std::uint64_t node_mask = 0;
  int bad_slot = -1;  // first slot whose expert id is neither -1 nor in [0, E); -1 when the row is valid

  FERRY_HD bool valid() const { return bad_slot < 0; }
  FERRY_HD int num_nodes() const { return popcount64(node_mask); }
};

FERRY_HD inline TokenRoute route_token(const std::int64_t* row, int num_topk, const ExpertSplit& split,
                                       const Topology& topo) {
  TokenRoute route;
  for (int k = 0; k < num_topk; ++k) {
    std::int64_t expert = row[k];
    if (expert == -1) continue;
    if (!split.valid(expert)) {
      route.bad_slot = k;
      return route;
    }
    route.node_mask |= std::uint64_t{1} << topo.node_of(split.rank_of(expert));
  }
  return route;
}

// Local ranks of `node` that hold at least one of the row's experts. The row must be valid.
FERRY_HD inline std::uint32_t local_mask_on_node(const std::int64_t* row, int num_topk, int node,
                                                 const ExpertSplit& split, const Topology& topo) {
  std::uint32_t mask = 0;
  for (int k = 0; k < num_topk; ++k) {
    std::int64_t expert = row[k];
    if (expert < 0) continue;
    int rank = split.rank_of(expert);
    if (topo.node_of(rank) == node) mask |= 1u << topo.local_of(rank);
  }
  return mask;
}

// From a layout row is_token_in_rank[t][0..R): the local ranks of `node` the token goes to, and its nodes.
// The executors route by the layout (copied when the operation is issued), never by expert ids the caller may
// still change: the ids only travel as data, and are checked against the layout before they do.
FERRY_HD inline std::uint32_t local_mask_in(const std::uint8_t* in_rank, int node, const Topology& topo) {
  std::uint32_t mask = 0;
  const std::uint8_t* row = in_rank + static_cast<std::size_t>(node) * topo.local_size;
  for (int l = 0; l < topo.local_size; ++l) mask |= (row[l] != 0 ? 1u : 0u) << l;
  return mask;
}

FERRY_HD inline std::uint64_t node_mask_in(const std::uint8_t* in_rank, const Topology& topo) {
  std::uint64_t mask = 0;
  for (int node = 0; node < topo.num_nodes; ++node) {
    if (local_mask_in(in_rank, node, topo) != 0) mask |= std::uint64_t{1} << node;
  }
  return mask;
}

// Whether `expert` is a valid id owned by a rank of `node` (an invalid id is on no node).
FERRY_HD inline bool expert_on_node(std::int64_t expert, int node, const ExpertSplit& split,
                                    const Topology& topo) {
  return split.valid(expert) && topo.node_of(split.rank_of(expert)) == node;
}

// The row's node mask without validation (for rows already checked by the layout).
FERRY_HD inline std::uint64_t node_mask_of(const std::int64_t* row, int num_topk, const ExpertSplit& split,
                                           const Topology& topo) {
  std::uint64_t mask = 0;
  for (int k = 0; k < num_topk; ++k) {
    if (row[k] >= 0) mask |= std::uint64_t{1} << topo.node_of(split.rank_of(row[k]));
  }
  return mask;
}

}  // namespace ferry::kernels::protocol
