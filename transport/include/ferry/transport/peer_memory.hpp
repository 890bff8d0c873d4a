// Intra-node peer memory: one region per local rank that every local rank of the node can load from and store
// to directly. `shm` (POSIX shared memory, the CPU backend's stand-in for NVLink) and `cuda_ipc` (device
// memory exported with cudaIpcGetMemHandle). Both are collective over the ranks of one node: every local rank
// calls the same make_* with the same size and tag.
//
// shm segments are named "/ferry-<job>-<node>-<local rank>-<tag>" (job id and tag reduced to [A-Za-z0-9_.]),
// so one job may hold several regions (one per tag) and jobs never collide. Each rank creates its own
// segment, every rank maps every segment of its node, and after a node barrier each owner unlinks its own:
// from then on nothing of the job remains in /dev/shm, even if a rank crashes later; the mappings live until
// the last munmap.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "ferry/transport/fabric.hpp"
#include "ferry/transport/peers.hpp"

namespace ferry::transport {

class PeerMemory {
 public:
  virtual ~PeerMemory() = default;
  // This rank's own region.
  virtual void* local() = 0;
  // The region of local rank `local_rank` of this node (the local one too) as this process addresses it.
  // Throws Errc::invalid_argument when local_rank is outside [0, local size).
  virtual void* peer(int local_rank) = 0;
  virtual std::size_t bytes() const = 0;
  virtual MemoryKind kind() const = 0;
};

// Collective over the node. Zero-filled. Throws Errc::invalid_argument for bytes == 0, a size that differs
// between local ranks, or a job id / tag that is empty or too long; Errc::system naming the segment and the
// call when creating, sizing or mapping fails (a full /dev/shm is reported as such, not as a SIGBUS later);
// Errc::timeout when a local rank does not arrive within peers.timeout.
// `reserve` = false leaves the pages to first touch instead of reserving them all (posix_fallocate): for a
// region sized for a worst case that is mostly never written (the low-latency mode's), at the price of a
// SIGBUS instead of an error when /dev/shm fills up.
std::unique_ptr<PeerMemory> make_shm_peer_memory(const Peers& peers, std::size_t bytes,
                                                 const std::string& tag = "peer", bool reserve = true);

// Collective over the node: cudaMalloc on `device` (zero-filled), handles exchanged through the store,
// cudaIpcOpenMemHandle for ranks in other processes; ranks in this same process (virtual ranks) get plain
// device pointers (peer access enabled when their device differs). Destroy it on every rank only after the
// node has stopped using it (a barrier), since the owner frees its memory in the destructor.
// Throws Errc::unsupported in builds without CUDA or when no GPU is usable.
std::unique_ptr<PeerMemory> make_cuda_ipc_peer_memory(const Peers& peers, std::size_t bytes, int device,
                                                      const std::string& tag = "peer");

// "ferry-<sanitized job id>-": every shm segment of the job starts with it (as listed in /dev/shm).
std::string shm_segment_prefix(const std::string& job_id);
// The shm_open name ("/ferry-...") of one rank's segment.
std::string shm_segment_name(const std::string& job_id, int node, int local_rank, const std::string& tag);
// For launchers and tests: removes every /dev/shm segment of the job that is still there (only a rank killed
// between creating its segment and the set-up barrier leaves one) and returns their names.
std::vector<std::string> remove_shm_segments(const std::string& job_id);
std::vector<std::string> list_shm_segments(const std::string& job_id);

}  // namespace ferry::transport
