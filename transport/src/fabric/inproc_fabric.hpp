// A fabric between ranks that are threads of one process (tests): a put is a memcpy into the peer's region, a
// signal or an atomic an atomic add on the peer's word, each done at once by the calling thread. Everything
// the proxy hands over is then plain memory traffic of this process, which ThreadSanitizer sees: the handoff
// from a channel worker through the command ring, the proxy thread and the fabric to the reader on the other
// node is race-checked end to end. Every operation acts at once and in order, more than a real fabric
// promises (a payload is never late), so the fabric's own ordering rules are tested elsewhere
// (tests/fabric). Ranks in other processes are refused at connect().
#pragma once

#include "fabric/noop_fabric.hpp"

namespace ferry::transport {

class InprocFabric final : public NoopFabric {
 public:
  explicit InprocFabric(const Peers& peers) : NoopFabric(peers) {}

  FabricKind kind() const override { return FabricKind::inproc; }
  std::string description() const override {
    return "inproc (ranks are threads of one process; puts are memcpy)";
  }
  RegionId register_region(void* base, std::size_t bytes, MemoryKind kind) override;
  void connect() override;
  std::uint64_t put(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                    std::size_t remote_offset, std::size_t bytes) override;
  std::uint64_t put_signal(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                           std::size_t remote_offset, std::size_t bytes, RegionId signal_region,
                           std::size_t signal_offset, std::uint64_t signal_add) override;
  std::uint64_t atomic_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) override;
  std::uint64_t fetch_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) override;

 private:
  std::byte* remote(int peer, RegionId region, std::size_t offset) const;
  const std::byte* local(RegionId region, std::size_t offset) const;

  std::vector<std::vector<std::byte*>> remote_bases_;  // [peer][region]
};

}  // namespace ferry::transport
