#include "fabric/noop_fabric.hpp"

#include "ferry/core/error.hpp"

namespace ferry::transport {

NoopFabric::NoopFabric(const Peers& peers) : peers_(peers) {
  if (peers_.store == nullptr) fail(Errc::invalid_argument, "noop fabric: Peers::store is null");
}

NoopFabric::~NoopFabric() = default;

RegionId NoopFabric::register_region(void* base, std::size_t bytes, MemoryKind kind) {
  if (connected_) fail(Errc::invalid_argument, "noop fabric: register_region after connect()");
  if (bytes == 0) fail(Errc::invalid_argument, "noop fabric: register_region of 0 bytes");
  if (kind != MemoryKind::host && base == nullptr) {
    fail(Errc::unsupported, "noop fabric: cannot allocate device memory; pass the region's base");
  }
  if (base == nullptr) {
    owned_.emplace_back(new std::uint64_t[(bytes + 7) / 8]());
    base = owned_.back().get();
  }
  regions_.push_back({base, bytes, kind});
  return static_cast<RegionId>(regions_.size() - 1);
}

void NoopFabric::connect() {
  if (connected_) fail(Errc::invalid_argument, "noop fabric: connect() called twice");
  detail::BlobWriter writer;
  writer.u32(static_cast<std::uint32_t>(regions_.size()));
  for (const auto& region : regions_) writer.u64(region.bytes);
  auto all = peers_.store->all_gather("ferry/fabric/noop/regions", peers_.rank, peers_.world_size,
                                      writer.take(), peers_.timeout);
  remote_bytes_.resize(all.size());
  for (std::size_t peer = 0; peer < all.size(); ++peer) {
    detail::BlobReader reader(all[peer], "noop fabric descriptors of rank " + std::to_string(peer));
    std::uint32_t count = reader.u32();
    if (count != regions_.size()) {
      fail(Errc::invalid_argument, "noop fabric: rank " + std::to_string(peer) + " registered " +
                                       std::to_string(count) + " regions but rank " +
                                       std::to_string(peers_.rank) + " registered " +
                                       std::to_string(regions_.size()));
    }
    for (std::uint32_t i = 0; i < count; ++i) remote_bytes_[peer].push_back(reader.u64());
    reader.expect_end();
  }
  connected_ = true;
}

void NoopFabric::check_connected(const char* op) const {
  if (!connected_) fail(Errc::invalid_argument, std::string("noop fabric: ") + op + " before connect()");
}

void NoopFabric::check_local(const char* op, RegionId region, std::size_t offset, std::size_t bytes) const {
  if (region >= regions_.size()) {
    fail(Errc::invalid_argument, std::string(op) + ": no local region " + std::to_string(region));
  }
  detail::check_range(op, "local", peers_.rank, region, offset, bytes, regions_[region].bytes);
}

void NoopFabric::check_remote(const char* op, int peer, RegionId region, std::size_t offset,
                              std::size_t bytes) const {
  check_connected(op);
  detail::check_peer(peers_, peer, op);
  if (region >= remote_bytes_[peer].size()) {
    fail(Errc::invalid_argument,
         std::string(op) + ": rank " + std::to_string(peer) + " has no region " + std::to_string(region));
  }
  detail::check_range(op, "remote", peer, region, offset, bytes, remote_bytes_[peer][region]);
}

std::uint64_t NoopFabric::complete_now() {
  std::uint64_t ticket = ledger_.issue();
  ledger_.finish(ticket);
  return ticket;
}

std::uint64_t NoopFabric::put(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                              std::size_t remote_offset, std::size_t bytes) {
  check_remote("put", peer, remote, remote_offset, bytes);
  check_local("put", local, local_offset, bytes);
  return complete_now();
}

std::uint64_t NoopFabric::put_signal(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                                     std::size_t remote_offset, std::size_t bytes, RegionId signal_region,
                                     std::size_t signal_offset, std::uint64_t) {
  check_remote("put_signal", peer, remote, remote_offset, bytes);
  check_remote("put_signal", peer, signal_region, signal_offset, 8);
  detail::check_atomic_offset("put_signal", peer, signal_region, signal_offset);
  check_local("put_signal", local, local_offset, bytes);
  return complete_now();
}

std::uint64_t NoopFabric::atomic_add(int peer, RegionId region, std::size_t offset, std::uint64_t) {
  check_remote("atomic_add", peer, region, offset, 8);
  detail::check_atomic_offset("atomic_add", peer, region, offset);
  return complete_now();
}

std::uint64_t NoopFabric::fetch_add(int peer, RegionId region, std::size_t offset, std::uint64_t) {
  check_remote("fetch_add", peer, region, offset, 8);
  detail::check_atomic_offset("fetch_add", peer, region, offset);
  return 0;
}

void* NoopFabric::region_base(RegionId region) const {
  if (region >= regions_.size())
    fail(Errc::invalid_argument, "noop fabric: no region " + std::to_string(region));
  return regions_[region].base;
}

std::size_t NoopFabric::region_bytes(RegionId region) const {
  if (region >= regions_.size())
    fail(Errc::invalid_argument, "noop fabric: no region " + std::to_string(region));
  return regions_[region].bytes;
}

}  // namespace ferry::transport
