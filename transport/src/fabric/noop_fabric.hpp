// A fabric that checks every argument like a real one and then moves nothing: every operation completes at
// once. It measures what surrounds the fabric (the proxy's command rings, the protocol) without any
// transport. InprocFabric adds the bytes to its bookkeeping and checks.
#pragma once

#include <memory>
#include <vector>

#include "fabric/fabric_common.hpp"

namespace ferry::transport {

class NoopFabric : public Fabric {
 public:
  explicit NoopFabric(const Peers& peers);
  ~NoopFabric() override;

  FabricKind kind() const override { return FabricKind::noop; }
  std::string description() const override { return "noop (operations complete at once, nothing moves)"; }
  RegionId register_region(void* base, std::size_t bytes, MemoryKind kind) override;
  void connect() override;
  std::uint64_t put(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                    std::size_t remote_offset, std::size_t bytes) override;
  std::uint64_t put_signal(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                           std::size_t remote_offset, std::size_t bytes, RegionId signal_region,
                           std::size_t signal_offset, std::uint64_t signal_add) override;
  std::uint64_t atomic_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) override;
  std::uint64_t fetch_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) override;
  std::uint64_t completed() const override { return ledger_.completed(); }
  bool progress() override { return false; }
  void flush() override {}
  void* region_base(RegionId region) const override;
  std::size_t region_bytes(RegionId region) const override;

 protected:
  void check_connected(const char* op) const;
  void check_local(const char* op, RegionId region, std::size_t offset, std::size_t bytes) const;
  void check_remote(const char* op, int peer, RegionId region, std::size_t offset, std::size_t bytes) const;
  std::uint64_t complete_now();

  Peers peers_;
  std::vector<detail::LocalRegion> regions_;
  std::vector<std::unique_ptr<std::uint64_t[]>> owned_;  // regions this fabric allocated
  std::vector<std::vector<std::size_t>> remote_bytes_;   // [peer][region]
  bool connected_ = false;
  detail::TicketLedger ledger_;
};

}  // namespace ferry::transport
