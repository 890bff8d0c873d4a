// ferry::Config — the knobs of a Buffer, as DeepEP's Config plus the limits that size the registered buffer.
//
// Rings are counted in messages (one token each). A rank's registered buffer holds, per channel, fabric rings
// to every remote node and node rings to every local rank, for each direction; buffer_size_hint() says how
// many bytes that is, so a config can be checked before any memory is registered. Ring slots are counted for
// the largest message the buffer is sized for (fp32 rows of max_hidden): an operation on smaller rows cuts
// the same bytes into more slots (bf16 twice as many, fp8 about four times).
//
// A Config can be written to and read from a JSON file (the keys are the field names, timeout in seconds), so
// a tuned configuration found by `ferry bench dispatch --sweep` can be loaded by a program:
//
//   ferry::Config config = ferry::Config::load("ferry-tuned.json");   // unknown keys are refused by name
//   ferry::Buffer buffer(group, config);
//   auto pending = buffer.dispatch(inputs, layout, {.config = config});   // or per call (num_sms, chunks)
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

#include "ferry/core/deadline.hpp"

namespace ferry {

struct Config {
  int num_sms = 20;       // SM budget; channels = num_sms / 2 (a channel is 2 SMs on the GPU)
  int max_nodes = 4;      // a token may touch at most this many nodes
  int max_hidden = 7168;  // the largest hidden size any dispatch or combine will use
  int max_topk = 8;       // the largest number of experts per token
  int rdma_ring_slots =
      32;  // slots per (channel, remote node) fabric ring; a power of two (DeepEP: rdma_chunked_recv)
  int rdma_chunk =
      16;  // messages per fabric put; a producer waits for this much credit (DeepEP: rdma_chunked_send)
  int nvl_ring_slots = 16;             // slots per (channel, local rank) ring inside a node; a power of two
  int nvl_chunk = 8;                   // messages a role moves per node ring before it publishes
  Duration timeout = kDefaultTimeout;  // an operation fails when a channel makes no progress for this long
  std::size_t buffer_bytes = 0;        // registered bytes per rank; 0: exactly buffer_size_hint()
  int host_workers = 0;                // host backend: worker threads per rank; 0: min(channels, cores)
  // Host backend, for tests of the GPU's concurrency on the CPU: every role of every channel on a thread of
  // its own (thread_per_role), or run by `host_lanes` (> 1) threads sharing its state as a warp group does,
  // the splittable roles in two such groups.
  bool host_thread_per_role = false;
  int host_lanes = 1;

  int num_channels() const { return num_sms / 2; }

  // Throws Errc::invalid_argument naming the field when the config cannot work for this cluster shape
  // (buffer_bytes included: it must hold every ring).
  void validate(int num_nodes, int local_size) const;

  // JSON: {"num_sms": 20, ..., "timeout_s": 100.0}. Missing keys keep their defaults; an unknown key, a value
  // of the wrong type or an unreadable file is refused with Errc::invalid_argument naming it.
  static Config from_json(const std::string& text);
  static Config load(const std::string& path);
  std::string to_json() const;
  void save(const std::string& path) const;  // written atomically (temporary file, then rename)
};

// Bytes of the registered buffer each rank needs for `config` on a cluster of num_nodes x local_size ranks.
std::size_t buffer_size_hint(const Config& config, int num_nodes, int local_size);

}  // namespace ferry
