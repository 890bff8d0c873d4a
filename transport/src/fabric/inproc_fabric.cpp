#include "fabric/inproc_fabric.hpp"

#include <unistd.h>

#include <atomic>
#include <cstring>

#include "ferry/core/error.hpp"

namespace ferry::transport {

namespace {

// Release (and acquire, for fetch_add's old value): what the calling thread wrote or read before (a payload,
// a slot it consumed) happens before whatever the peer does after it has seen the new value.
std::uint64_t add_release(std::byte* word, std::uint64_t add) {
  return std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(word))
      .fetch_add(add, std::memory_order_acq_rel);
}

}  // namespace

RegionId InprocFabric::register_region(void* base, std::size_t bytes, MemoryKind kind) {
  if (kind != MemoryKind::host) fail(Errc::unsupported, "inproc fabric: host memory only");
  return NoopFabric::register_region(base, bytes, kind);
}

void InprocFabric::connect() {
  NoopFabric::connect();  // region counts and sizes, checked
  detail::BlobWriter writer;
  writer.u64(static_cast<std::uint64_t>(::getpid()));
  for (const auto& region : regions_) writer.u64(reinterpret_cast<std::uintptr_t>(region.base));
  auto all = peers_.store->all_gather("ferry/fabric/inproc/bases", peers_.rank, peers_.world_size,
                                      writer.take(), peers_.timeout);
  remote_bases_.resize(all.size());
  for (std::size_t peer = 0; peer < all.size(); ++peer) {
    detail::BlobReader reader(all[peer], "inproc fabric descriptors of rank " + std::to_string(peer));
    const std::uint64_t pid = reader.u64();
    if (pid != static_cast<std::uint64_t>(::getpid())) {
      fail(Errc::invalid_argument, "inproc fabric: rank " + std::to_string(peer) + " is process " +
                                       std::to_string(pid) + ", not this one (" + std::to_string(::getpid()) +
                                       "): the inproc fabric joins ranks that are threads of one process");
    }
    for (std::size_t region = 0; region < regions_.size(); ++region) {
      remote_bases_[peer].push_back(reinterpret_cast<std::byte*>(static_cast<std::uintptr_t>(reader.u64())));
    }
    reader.expect_end();
  }
}

std::byte* InprocFabric::remote(int peer, RegionId region, std::size_t offset) const {
  return remote_bases_[peer][region] + offset;
}

const std::byte* InprocFabric::local(RegionId region, std::size_t offset) const {
  return static_cast<const std::byte*>(regions_[region].base) + offset;
}

std::uint64_t InprocFabric::put(int peer, RegionId local_region, std::size_t local_offset,
                                RegionId remote_region, std::size_t remote_offset, std::size_t bytes) {
  const std::uint64_t ticket =
      NoopFabric::put(peer, local_region, local_offset, remote_region, remote_offset, bytes);
  if (bytes > 0)
    std::memcpy(remote(peer, remote_region, remote_offset), local(local_region, local_offset), bytes);
  return ticket;
}

std::uint64_t InprocFabric::put_signal(int peer, RegionId local_region, std::size_t local_offset,
                                       RegionId remote_region, std::size_t remote_offset, std::size_t bytes,
                                       RegionId signal_region, std::size_t signal_offset,
                                       std::uint64_t signal_add) {
  const std::uint64_t ticket =
      NoopFabric::put_signal(peer, local_region, local_offset, remote_region, remote_offset, bytes,
                             signal_region, signal_offset, signal_add);
  if (bytes > 0)
    std::memcpy(remote(peer, remote_region, remote_offset), local(local_region, local_offset), bytes);
  add_release(remote(peer, signal_region, signal_offset), signal_add);
  return ticket;
}

std::uint64_t InprocFabric::atomic_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) {
  const std::uint64_t ticket = NoopFabric::atomic_add(peer, region, offset, add);
  add_release(remote(peer, region, offset), add);
  return ticket;
}

std::uint64_t InprocFabric::fetch_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) {
  NoopFabric::fetch_add(peer, region, offset, add);
  return add_release(remote(peer, region, offset), add);
}

}  // namespace ferry::transport
