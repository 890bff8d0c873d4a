// `ferry probe fabric`: put bandwidth and put_signal latency of every directed link between the job's nodes
// (or, on one node, between its ranks), measured pair by pair through ferry's fabric.
//
// Schedule: the round-robin tournament of pair_schedule.hpp; in each round every pair sends both ways at
// once (each endpoint sends to one peer and receives from one), then measures latency one direction at a
// time. A node is represented by its local rank 0; the other ranks only keep the fabric progressing.
#pragma once

#include <cstddef>
#include <string>

#include "ferry/core/deadline.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/fabric.hpp"
#include "probe/link_matrix.hpp"

namespace ferry::tools::probe {

struct FabricProbeOptions {
  transport::FabricKind fabric = transport::FabricKind::ucx;
  std::string level = "auto";           // "node", "rank", or "auto": node with 2+ nodes, else rank
  std::size_t message_bytes = 1 << 20;  // bytes per put
  std::size_t link_bytes = 64 << 20;    // timed bytes per direction (whole puts; at least one)
  int warmup_puts = 2;
  int latency_iters = 100;  // timed ping-pongs per direction (after 3 untimed)
  Duration timeout = kDefaultTimeout;
};

// "node" or "rank" for this job; throws Errc::invalid_argument for an unknown level and when the level has
// fewer than two endpoints.
std::string resolve_level(const std::string& level, int num_nodes, int world_size);

// Collective: every rank of `group` calls it with the same options. Returns the whole matrix on every rank.
LinkMatrix run_fabric_probe(Group& group, const FabricProbeOptions& options);

}  // namespace ferry::tools::probe
