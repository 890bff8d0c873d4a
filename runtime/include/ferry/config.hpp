// ferry::Config — the knobs of a Buffer, as DeepEP's Config plus the limits that size the registered buffer.
//
// Rings are counted in messages (one token each). A rank's registered buffer holds, per channel, one fabric
// ring per node and one NVLink ring per local rank for each direction; buffer_size_hint() says how many bytes
// that is, so a config can be checked before any memory is registered.
#pragma once

#include <cstddef>
#include <cstdint>

#include "ferry/core/deadline.hpp"

namespace ferry {

struct Config {
  int num_sms = 20;           // SM budget; channels = num_sms / 2 (a channel is 2 SMs on the GPU)
  int max_nodes = 4;          // a token may touch at most this many nodes
  int max_hidden = 7168;      // the largest hidden size any dispatch or combine will use
  int max_topk = 8;           // the largest number of experts per token
  int rdma_ring_slots = 32;   // slots per (channel, node) fabric ring; a power of two (DeepEP: rdma_chunked_recv)
  int rdma_chunk = 8;         // messages a role moves per fabric ring before it publishes (DeepEP: rdma_chunked_send)
  int nvl_ring_slots = 16;    // slots per (channel, local rank) ring inside a node; a power of two
  int nvl_chunk = 4;          // messages a role moves per node ring before it publishes
  Duration timeout = kDefaultTimeout;  // an operation fails when a channel makes no progress for this long
  std::size_t buffer_bytes = 0;        // registered bytes per rank; 0: exactly buffer_size_hint()
  int host_workers = 0;       // host backend: worker threads per rank; 0: min(channels, cores)

  int num_channels() const { return num_sms / 2; }

  // Throws Errc::invalid_argument naming the field when the config cannot work for this cluster shape.
  void validate(int num_nodes, int local_size) const;
};

// Bytes of the registered buffer each rank needs for `config` on a cluster of num_nodes x local_size ranks.
std::size_t buffer_size_hint(const Config& config, int num_nodes, int local_size);

}  // namespace ferry
