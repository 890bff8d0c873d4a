#include "fabric/device_copy_shared.hpp"

#include "ferry/core/error.hpp"

namespace ferry::transport::detail {

DeviceCopyShared::DeviceCopyShared(int num_ranks, int device_index, Duration wait_timeout)
    : device(device_index), timeout(wait_timeout), ranks_(static_cast<std::size_t>(num_ranks)) {}

void DeviceCopyShared::claim_rank(int rank) {
  std::lock_guard lock(mutex_);
  if (rank < 0 || rank >= num_ranks()) {
    fail(Errc::invalid_argument, "DeviceCopyWorld::make_fabric: rank " + std::to_string(rank) +
                                     " is outside the world of " + std::to_string(num_ranks()) + " ranks");
  }
  Rank& entry = ranks_[static_cast<std::size_t>(rank)];
  if (entry.has_fabric) {
    fail(Errc::invalid_argument, "DeviceCopyWorld::make_fabric: rank " + std::to_string(rank) +
                                     " already has its fabric (one per rank)");
  }
  entry.has_fabric = true;
}

void DeviceCopyShared::add_region(int rank, const DeviceRegion& region) {
  std::lock_guard lock(mutex_);
  ranks_[static_cast<std::size_t>(rank)].regions.push_back(region);
}

void DeviceCopyShared::connect(int rank) {
  std::lock_guard lock(mutex_);
  Rank& self = ranks_[static_cast<std::size_t>(rank)];
  for (int other = 0; other < num_ranks(); ++other) {
    const Rank& peer = ranks_[static_cast<std::size_t>(other)];
    if (other == rank || !peer.connected || peer.regions.size() == self.regions.size()) continue;
    fail(Errc::invalid_argument,
         "device_copy fabric: rank " + std::to_string(rank) + " registered " +
             std::to_string(self.regions.size()) + " regions but rank " + std::to_string(other) +
             " registered " + std::to_string(peer.regions.size()) + " (every rank registers the same)");
  }
  self.connected = true;
}

std::vector<DeviceRegion> DeviceCopyShared::connected_regions(int peer, const char* op, int caller) {
  std::lock_guard lock(mutex_);
  if (peer < 0 || peer >= num_ranks()) {
    fail(Errc::invalid_argument, std::string(op) + ": peer rank " + std::to_string(peer) +
                                     " is outside the world of " + std::to_string(num_ranks()) + " ranks");
  }
  const Rank& entry = ranks_[static_cast<std::size_t>(peer)];
  if (entry.gone) {
    fail(Errc::invalid_argument, std::string(op) + " from rank " + std::to_string(caller) +
                                     ": the fabric of rank " + std::to_string(peer) + " has been destroyed");
  }
  if (!entry.connected) {
    fail(Errc::invalid_argument, std::string(op) + " from rank " + std::to_string(caller) + ": rank " +
                                     std::to_string(peer) +
                                     " has not connected its device_copy fabric yet (connect() every rank "
                                     "before operations that target it)");
  }
  return entry.regions;
}

void DeviceCopyShared::claim_signal_word(int source, int target, RegionId region, std::size_t offset,
                                         const char* op) {
  std::lock_guard lock(mutex_);
  auto [it, inserted] = signal_sources_.try_emplace({target, region, offset}, source);
  if (inserted || it->second == source) return;
  fail(Errc::invalid_argument,
       std::string(op) + ": rank " + std::to_string(source) + " signals the word at offset " +
           std::to_string(offset) + " of region " + std::to_string(region) + " of rank " +
           std::to_string(target) + ", which rank " + std::to_string(it->second) +
           " already signals; a device_copy fabric keeps each word's value on the host, so one source rank "
           "owns it");
}

void DeviceCopyShared::leave(int rank) {
  std::lock_guard lock(mutex_);
  Rank& entry = ranks_[static_cast<std::size_t>(rank)];
  entry.gone = true;
  entry.connected = false;
  entry.regions.clear();
}

}  // namespace ferry::transport::detail
