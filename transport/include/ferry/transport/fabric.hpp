// The inter-node fabric: one-sided RDMA between ranks, behind one interface with two real backends (ucx,
// verbs), a no-op one (measures the cost of everything around the fabric) and an in-process one (ranks that
// are threads of one process, for tests: ThreadSanitizer sees every byte it moves).
//
// Set-up is collective: every rank calls make_fabric(), registers the same sequence of regions, then calls
// connect(). Region i on rank A pairs with region i on rank B (sizes may differ per rank; every access is
// bounds-checked against the target's size); connect() exchanges the remote descriptors (rkeys, queue pair
// numbers) through the store. Operations name (peer, region id, offset) and never raw remote addresses.
//
// Completion model: put/put_signal/atomic_add are non-blocking and may return before the bytes leave; the
// caller keeps the source bytes unchanged until flush() returns or completed() reaches the operation's
// ticket. progress() must be called regularly by the thread that owns the fabric (the proxy): on tcp and
// shared memory the target side only moves bytes while it progresses, so *every* rank keeps progressing while
// it waits for anything (use fabric_barrier() rather than a plain store barrier once data may be in flight).
// A fabric is used by one thread at a time.
//
// Failure model: a peer that dies or becomes unreachable surfaces as ferry::Error(Errc::peer_failure) naming
// the peer rank, thrown from the next put/progress/flush of this fabric; every wait inside a fabric has the
// deadline Peers::timeout and throws Errc::timeout naming what it waited for. After either, the fabric is
// broken: every later call throws the same error; only destruction is safe (and bounded).
//
// With FabricOptions::isolate_peer_failures the failure of one peer stays that peer's, when it is dead: the
// fabric marks it failed (a failed endpoint or queue pair, an operation to it that failed, no completion from
// it within Peers::timeout, or the owner's fail_peer) once the job's store names it dead (Peers::watch's
// lost ranks, asked for up to 2 s; a live peer whose connection failed or that froze breaks the fabric as
// without the option, so no live peer's writes are dropped silently), completes its outstanding operations
// without waiting for them (their bytes may or may not have landed), completes later operations to it at once
// without sending anything, and goes on with the other peers; failed_peers() names it with the reason. Only
// errors that are no single peer's (a broken device, a local call that failed) still break the fabric.
// fetch_add (control path) to a failed peer throws Errc::peer_failure without breaking the fabric.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ferry/transport/peers.hpp"

namespace ferry::transport {

enum class MemoryKind { host, cuda };
// device_copy: virtual ranks of one process on one GPU (device_copy.hpp); made by DeviceCopyWorld, never by
// make_fabric() or FERRY_FABRIC.
// inproc: ranks that are threads of one process (tests); puts are memcpy, signals atomic adds.
enum class FabricKind { ucx, verbs, noop, device_copy, inproc };

using RegionId = std::uint32_t;

struct FabricOptions {
  FabricKind kind = FabricKind::ucx;
  int qps_per_peer = 1;               // verbs: RC QPs per peer (operations striped round-robin)
  std::size_t max_inline_bytes = 64;  // verbs: writes up to this size go inline (capped by the device)
  std::size_t max_in_flight = 256;  // bound on posted, uncompleted operations per peer (post waits above it)
  // A peer's failure fails only that peer (see "Failure model" above), for owners that skip a dead peer
  // instead of failing (the low-latency mode); false: it breaks the fabric, as every other owner wants.
  // ucx only: make_fabric refuses it for verbs (Errc::unsupported); noop and inproc accept it (nothing
  // fails).
  bool isolate_peer_failures = false;
};

// A peer a fabric stopped talking to under FabricOptions::isolate_peer_failures, and why.
struct FailedPeer {
  int rank = -1;
  std::string reason;
};

// FERRY_FABRIC=ucx|verbs|noop|inproc|auto (unset: auto); auto picks verbs when an RDMA device exists, else
// ucx. Throws Errc::invalid_argument naming the variable for any other value.
FabricKind fabric_kind_from_env();
// "ucx", "verbs", "noop", "device_copy", "inproc".
const char* to_string(FabricKind kind);
// Inverse of to_string (also accepts "auto", resolved as fabric_kind_from_env does); throws invalid_argument.
FabricKind parse_fabric_kind(const std::string& name);

class Fabric {
 public:
  virtual ~Fabric() = default;
  virtual FabricKind kind() const = 0;
  // One line for logs and benchmark reports: backend, library version, transports in use.
  virtual std::string description() const = 0;

  // Local set-up (before connect()). `base == nullptr` asks the fabric to allocate the region itself
  // (zero-filled host memory, or device memory for MemoryKind::cuda): preferred, since some transports only
  // offer true one-sided access to memory they allocated (UCX on tcp/shm). region_base() returns the address.
  virtual RegionId register_region(void* base, std::size_t bytes, MemoryKind kind) = 0;
  // Collective: exchanges descriptors with every rank and connects. Call once, after every register_region.
  virtual void connect() = 0;

  // RDMA write of [local+local_offset, +bytes) into the peer's region at remote_offset.
  virtual std::uint64_t put(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                            std::size_t remote_offset, std::size_t bytes) = 0;
  // As put, then an atomic add of `signal_add` to the peer's 64-bit word at (signal_region, signal_offset)
  // that becomes visible only after the payload. `bytes` may be 0 (signal only).
  virtual std::uint64_t put_signal(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                                   std::size_t remote_offset, std::size_t bytes, RegionId signal_region,
                                   std::size_t signal_offset, std::uint64_t signal_add) = 0;
  // Atomic add on the peer's 64-bit word (8-byte aligned offset).
  virtual std::uint64_t atomic_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) = 0;
  // Blocking fetch-and-add; returns the old value (control path, not data path). Consumes no ticket.
  virtual std::uint64_t fetch_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) = 0;

  // Each operation returns a ticket (increasing from 1, per fabric). completed() is the highest ticket T such
  // that every operation with a ticket <= T is done locally (its source bytes may be reused); 0 before any.
  // progress() advances it and returns true when anything moved. flush() waits until every posted operation
  // is done *and visible at its target* (deadline: Peers::timeout).
  virtual std::uint64_t completed() const = 0;
  virtual bool progress() = 0;
  virtual void flush() = 0;

  // Local address and size of a registered region (for the caller's own reads of signals and payload).
  virtual void* region_base(RegionId region) const = 0;
  virtual std::size_t region_bytes(RegionId region) const = 0;

  // Under isolate_peer_failures: the peers failed so far, in the order they failed (failed_peer_count() is
  // the cheap question "did that change?"). Always empty without it, and for fabrics whose peers cannot fail
  // (noop, inproc).
  virtual std::size_t failed_peer_count() const { return 0; }
  virtual std::vector<FailedPeer> failed_peers() const { return {}; }
  // Under isolate_peer_failures: the owner gave up on `peer` (it stopped answering, so it is as good as
  // dead): the fabric fails it as if its connection had failed. Does nothing without the option.
  virtual void fail_peer(int peer, const std::string& reason) {
    (void)peer;
    (void)reason;
  }
};

// Creates the backend (collective: every rank of `peers` calls it with the same options). Throws
// Errc::unsupported with the reason when the backend cannot run here (verbs without a device), and
// Errc::invalid_argument for FabricKind::device_copy (DeviceCopyWorld::make_fabric makes those).
std::unique_ptr<Fabric> make_fabric(const Peers& peers, const FabricOptions& options);

// A barrier over the store that keeps `fabric` progressing while it waits, so peers blocked in a flush that
// needs this rank's progress (tcp, shared memory) still finish. Deadline: peers.timeout.
void fabric_barrier(Fabric& fabric, const Peers& peers, const std::string& name);

}  // namespace ferry::transport
