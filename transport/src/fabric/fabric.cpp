// Backend selection and the fabric-aware barrier.
#include "ferry/transport/fabric.hpp"

#include <chrono>

#include "fabric/fabric_common.hpp"
#include "fabric/inproc_fabric.hpp"
#include "fabric/noop_fabric.hpp"
#include "fabric/ucx_fabric.hpp"
#include "fabric/verbs_fabric.hpp"
#include "ferry/core/env.hpp"
#include "ferry/core/error.hpp"

namespace ferry::transport {

const char* to_string(FabricKind kind) {
  switch (kind) {
    case FabricKind::ucx:
      return "ucx";
    case FabricKind::verbs:
      return "verbs";
    case FabricKind::noop:
      return "noop";
    case FabricKind::device_copy:
      return "device_copy";
    case FabricKind::inproc:
      return "inproc";
  }
  return "unknown";
}

namespace {

FabricKind auto_kind() {
  return detail::rdma_device_present() ? FabricKind::verbs : FabricKind::ucx;
}

}  // namespace

FabricKind parse_fabric_kind(const std::string& name) {
  if (name == "ucx") return FabricKind::ucx;
  if (name == "verbs") return FabricKind::verbs;
  if (name == "noop") return FabricKind::noop;
  if (name == "device_copy") return FabricKind::device_copy;
  if (name == "inproc") return FabricKind::inproc;
  if (name == "auto") return auto_kind();
  fail(Errc::invalid_argument,
       "unknown fabric '" + name + "' (expected ucx, verbs, noop, device_copy, inproc or auto)");
}

FabricKind fabric_kind_from_env() {
  auto value = env::get("FERRY_FABRIC");
  if (!value || value->empty()) return auto_kind();
  try {
    return parse_fabric_kind(*value);
  } catch (const Error&) {
    fail(Errc::invalid_argument,
         "FERRY_FABRIC='" + *value + "' is not one of ucx, verbs, noop, inproc, auto");
  }
}

std::unique_ptr<Fabric> make_fabric(const Peers& peers, const FabricOptions& options) {
  if (peers.store == nullptr) fail(Errc::invalid_argument, "make_fabric: Peers::store is null");
  if (peers.world_size < 1 || peers.rank < 0 || peers.rank >= peers.world_size || peers.local_size < 1 ||
      peers.world_size % peers.local_size != 0) {
    fail(Errc::invalid_argument, "make_fabric: inconsistent Peers (rank " + std::to_string(peers.rank) +
                                     ", world " + std::to_string(peers.world_size) + ", local size " +
                                     std::to_string(peers.local_size) + ")");
  }
  if (options.max_in_flight == 0)
    fail(Errc::invalid_argument, "make_fabric: FabricOptions::max_in_flight is 0");
  if (options.qps_per_peer < 1) fail(Errc::invalid_argument, "make_fabric: FabricOptions::qps_per_peer < 1");
  if (options.isolate_peer_failures && options.kind == FabricKind::verbs) {
    // A failed RC queue pair would have to be told apart from a failed device and its posted work requests
    // drained per peer: not built. Owners that can live without isolation fall back (GroupTransport).
    fail(Errc::unsupported,
         "make_fabric: FabricOptions::isolate_peer_failures is not supported by the verbs fabric (only ucx "
         "isolates a failed peer; noop and inproc peers cannot fail)");
  }
  switch (options.kind) {
    case FabricKind::ucx:
      return std::make_unique<UcxFabric>(peers, options);
    case FabricKind::verbs:
      return std::make_unique<VerbsFabric>(peers, options);
    case FabricKind::noop:
      return std::make_unique<NoopFabric>(peers);
    case FabricKind::inproc:
      return std::make_unique<InprocFabric>(peers);
    case FabricKind::device_copy:
      fail(Errc::invalid_argument,
           "make_fabric: a device_copy fabric joins virtual ranks of one process on one GPU; make it with "
           "DeviceCopyWorld::make_fabric(rank) (ferry/transport/device_copy.hpp), not from Peers");
  }
  fail(Errc::invalid_argument, "make_fabric: unknown FabricKind");
}

void fabric_barrier(Fabric& fabric, const Peers& peers, const std::string& name) {
  // One counter per name: the k-th round is complete once it reaches (k + 1) * world_size. A rank can only
  // start round k + 1 after round k completed, so arrivals of different rounds never mix up.
  const std::string key = "ferry/fabric/barrier/" + name;
  const std::int64_t world = peers.world_size;
  std::int64_t arrived = peers.store->add(key, 1);
  std::int64_t target = ((arrived - 1) / world + 1) * world;
  Deadline deadline(peers.timeout);
  Backoff backoff;
  auto next_poll = Clock::now();
  std::int64_t seen = arrived;
  while (seen < target) {
    if (peers.watch != nullptr) peers.watch->check();  // a rank that failed will never arrive
    if (fabric.progress()) backoff.reset();
    // Ask the store at most every 200 us; the fabric keeps progressing in between.
    if (Clock::now() >= next_poll) {
      seen = peers.store->add(key, 0);
      next_poll = Clock::now() + std::chrono::microseconds(200);
      if (seen >= target) break;
    }
    if (deadline.expired()) {
      fail(Errc::timeout, "fabric barrier '" + name + "' on rank " + std::to_string(peers.rank) +
                              " timed out: " + std::to_string(world - (target - seen)) + " of " +
                              std::to_string(world) + " ranks arrived");
    }
    backoff.pause();
  }
}

}  // namespace ferry::transport
