// Ranks, nodes and channels (DESIGN.md "Ranks, nodes, channels").
//
// A world of R = N nodes x L local ranks, rank = node * L + local. The rail partner of rank (n, l) on node n'
// is (n', l): tokens cross the fabric only between rail partners. A channel is one contiguous slice of the
// source tokens; every role works channel by channel, so channels never share a ring.
#pragma once

#include <cstdint>

#include "ferry/kernels/protocol/hd.hpp"

namespace ferry::kernels::protocol {

// Masks of nodes are 64-bit and masks of local ranks 32-bit, which bounds the world this protocol can
// address.
inline constexpr int kMaxNodes = 64;
inline constexpr int kMaxLocalRanks = 32;

struct Topology {
  int num_nodes = 1;
  int local_size = 1;
  int num_channels = 1;

  FERRY_HD int num_ranks() const { return num_nodes * local_size; }
  FERRY_HD int node_of(int rank) const { return rank / local_size; }
  FERRY_HD int local_of(int rank) const { return rank % local_size; }
  FERRY_HD int rank_of(int node, int local) const { return node * local_size + local; }
  FERRY_HD int rail_partner(int rank, int node) const { return rank_of(node, local_of(rank)); }
  FERRY_HD int num_remote_nodes() const { return num_nodes - 1; }
};

// Seen from one node, the other nodes are numbered 0 .. N-2 in node order, skipping itself: rings that only
// ever join different nodes are indexed this way, so no ring is reserved for a node talking to itself.
FERRY_HD inline int remote_index(int own_node, int other_node) {
  return other_node < own_node ? other_node : other_node - 1;
}
FERRY_HD inline int remote_node(int own_node, int index) {
  return index < own_node ? index : index + 1;
}

// Tokens [begin, end) of one channel: ceil(T / C) per channel, the last ones possibly short or empty.
struct TokenRange {
  std::int64_t begin = 0;
  std::int64_t end = 0;
  FERRY_HD std::int64_t size() const { return end - begin; }
};

FERRY_HD inline TokenRange channel_tokens(std::int64_t num_tokens, int num_channels, int channel) {
  std::int64_t per_channel = (num_tokens + num_channels - 1) / num_channels;
  std::int64_t begin = per_channel * channel;
  if (begin > num_tokens) begin = num_tokens;
  std::int64_t end = begin + per_channel;
  if (end > num_tokens) end = num_tokens;
  return {begin, end};
}

FERRY_HD inline int channel_of_token(std::int64_t num_tokens, int num_channels, std::int64_t token) {
  std::int64_t per_channel = (num_tokens + num_channels - 1) / num_channels;
  return static_cast<int>(token / per_channel);
}

}  // namespace ferry::kernels::protocol
