// What the fabrics of one DeviceCopyWorld share: every rank's regions, who has connected, and which rank
// signals which word. Plain C++ under one mutex; the data path touches it only on a rank's first operation
// towards a peer and on the first signal of a word.
#pragma once

#include <cstddef>
#include <map>
#include <mutex>
#include <string>
#include <tuple>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/transport/fabric.hpp"

namespace ferry::transport::detail {

struct DeviceRegion {
  void* base = nullptr;
  std::size_t bytes = 0;
};

struct DeviceCopyShared {
  DeviceCopyShared(int num_ranks, int device, Duration timeout);

  const int device;
  const Duration timeout;

  // Records the one fabric of `rank`; throws invalid_argument for a rank outside the world or a second one.
  void claim_rank(int rank);
  // Before connect(): appends a region of `rank`.
  void add_region(int rank, const DeviceRegion& region);
  // Freezes `rank`'s regions, after checking that it registered as many as every rank connected before it.
  void connect(int rank);
  // The frozen regions of `peer` (a copy: they never change once connected). Throws invalid_argument when
  // `peer` is outside the world, has not connected, or is gone; `op` and `caller` go into the message.
  std::vector<DeviceRegion> connected_regions(int peer, const char* op, int caller);
  // Makes `source` the one rank that signals the word (target, region, offset); throws invalid_argument
  // naming both ranks when another rank already does.
  void claim_signal_word(int source, int target, RegionId region, std::size_t offset, const char* op);
  // The fabric of `rank` is being destroyed: later lookups of its regions fail by name.
  void leave(int rank);

  int num_ranks() const { return static_cast<int>(ranks_.size()); }

 private:
  struct Rank {
    bool has_fabric = false;
    bool connected = false;
    bool gone = false;
    std::vector<DeviceRegion> regions;
  };

  std::mutex mutex_;
  std::vector<Rank> ranks_;
  std::map<std::tuple<int, RegionId, std::size_t>, int>
      signal_sources_;  // (target, region, offset) -> source
};

}  // namespace ferry::transport::detail
