#include "group_transport.hpp"

#include <cerrno>
#include <csignal>
#include <deque>
#include <limits>
#include <thread>

#include "ferry/core/error.hpp"
#include "ferry/runtime/group_peers.hpp"
#include "ferry/transport/command_ring.hpp"
#include "ferry/transport/peers.hpp"

namespace ferry {

namespace {

namespace h = kernels::host;
namespace t = transport;

t::Peers peers_of(Group& group, Duration timeout) {
  return runtime::group_peers(group, timeout);
}

// How long a rank that saw a peer go waits for the store to say why (it normally knows in milliseconds).
constexpr std::chrono::milliseconds kCauseWait{500};

// A peer that is gone may be a survivor that left once the job had failed for another rank: the store names
// the cause within moments (it saw the connections close), so every rank names the same one. Rethrows
// `error` as it is when it is no peer failure or the store says nothing.
[[noreturn]] void rethrow_with_cause(const Error& error, const t::StoreWatch* watch) {
  if (error.code() == Errc::peer_failure && watch != nullptr) {
    const std::string cause = watch->await_failure(kCauseWait);
    if (!cause.empty()) fail(Errc::peer_failure, cause);
  }
  throw error;
}

// One worker's command ring. A put is held back until the next call so that the signal which follows it (the
// protocol always publishes a batch of puts with one signal to the same rank) rides on the same command. The
// writer never blocks: when the ring is full, commands wait in a backlog, in order, and flush() (called by
// the executor between steps) hands them over as the proxy frees slots. The backlog is bounded by the
// protocol itself: every command belongs to a publish or a credit return, and those are bounded by the rings'
// slots.
class ProxyWriter final : public h::RemoteWriter {
 public:
  ProxyWriter(t::ProducerRing& ring, t::RegionId region, const t::StoreWatch* watch)
      : ring_(ring), region_(static_cast<std::uint8_t>(region)), watch_(watch) {}

  void put(int rank, std::size_t src_offset, std::size_t dst_offset, std::size_t bytes) override {
    release_held();
    held_ = {true, rank, src_offset, dst_offset, bytes};
  }

  void signal(int rank, std::size_t word_offset, std::uint64_t add) override {
    auto peer = static_cast<std::uint16_t>(rank);
    auto offset = static_cast<std::uint32_t>(word_offset);
    auto amount = static_cast<std::uint32_t>(add);
    if (held_.valid && held_.rank == rank) {
      enqueue(t::make_put_signal(peer, region_, held_.src, held_.dst, static_cast<std::uint32_t>(held_.bytes),
                                 offset, amount));
      held_.valid = false;
      return;
    }
    release_held();
    // A signal without payload is still ordered after this ring's earlier puts (put_signal fences; atomic_add
    // does not promise to).
    enqueue(t::make_put_signal(peer, region_, 0, 0, 0, offset, amount));
  }

  bool flush() override {
    release_held();
    try {
      ring_.check_error();
    } catch (const Error& error) {
      rethrow_with_cause(error, watch_);
    }
    while (!backlog_.empty() && ring_.try_post(backlog_.front())) backlog_.pop_front();
    return backlog_.empty();
  }

  std::size_t held() const override { return backlog_.size() + (held_.valid ? 1 : 0); }

 private:
  void enqueue(const t::Command& command) {
    if (backlog_.empty() && ring_.try_post(command)) return;
    backlog_.push_back(command);
  }

  void release_held() {
    if (!held_.valid) return;
    held_.valid = false;
    enqueue(t::make_put(static_cast<std::uint16_t>(held_.rank), region_, held_.src, held_.dst,
                        static_cast<std::uint32_t>(held_.bytes)));
  }

  struct Held {
    bool valid = false;
    int rank = 0;
    std::size_t src = 0;
    std::size_t dst = 0;
    std::size_t bytes = 0;
  };
  t::ProducerRing& ring_;
  std::uint8_t region_;
  const t::StoreWatch* watch_;  // the Group's; outlives the writer
  Held held_;
  std::deque<t::Command> backlog_;
};

}  // namespace

class GroupTransport::NodeView final : public h::NodeMemory {
 public:
  explicit NodeView(t::PeerMemory& shared) : shared_(shared) {}
  std::byte* base(int local_rank) const override { return static_cast<std::byte*>(shared_.peer(local_rank)); }

 private:
  t::PeerMemory& shared_;
};

// Ranks of this node are processes of this host: one that is gone is reported at once. Ranks of other nodes
// are watched by the fabric (UCX reports a failed endpoint), whose error the proxy keeps. And every rank
// hears from the store when the job failed anywhere (a rank's connection closed, a rank reported a failure),
// so a rank waiting for a healthy peer that is itself stuck on a dead one stops too, naming the cause.
class GroupTransport::Health final : public h::PeerHealth {
 public:
  Health(Group& group, const t::Proxy* proxy) : proxy_(proxy), watch_(group.failure_watch()) {
    for (const RankInfo& info : group.ranks()) {
      if (info.node == group.node() && info.rank != group.rank() && info.pid > 0) local_.push_back(info);
    }
  }

  void check() override {
    if (watch_) watch_->check();  // the job's failure, as the store knows it: the cause, if anyone failed
    try {
      for (const RankInfo& info : local_) {
        if (::kill(info.pid, 0) == 0 || errno != ESRCH) continue;
        fail(Errc::peer_failure, "rank " + std::to_string(info.rank) + " (pid " + std::to_string(info.pid) +
                                     " on " + info.hostname +
                                     ", this node) is gone: its process exited or was killed");
      }
      if (proxy_ != nullptr) proxy_->check_error();
    } catch (const Error& error) {
      rethrow_with_cause(error, watch_.get());
    }
  }

 private:
  const t::Proxy* proxy_;
  std::shared_ptr<t::StoreWatch> watch_;
  std::vector<RankInfo> local_;
};

class GroupTransport::ProxyMemory final : public h::RemoteMemory {
 public:
  ProxyMemory(t::Proxy& proxy, t::RegionId region, const t::StoreWatch* watch)
      : proxy_(proxy), region_(region), watch_(watch) {}
  std::unique_ptr<h::RemoteWriter> open_writer() override {
    if (next_ring_ >= proxy_.num_rings()) {
      fail(Errc::internal,
           "more channel workers than command rings (" + std::to_string(proxy_.num_rings()) + ")");
    }
    return std::make_unique<ProxyWriter>(proxy_.ring(next_ring_++), region_, watch_);
  }

 private:
  t::Proxy& proxy_;
  t::RegionId region_;
  const t::StoreWatch* watch_;
  int next_ring_ = 0;
};

namespace {
std::size_t signals_end(const kernels::protocol::BufferLayout& layout) {
  // Commands carry 32-bit signal offsets: the counters come first in the layout, so this holds for any size.
  const auto& last = layout.families[kernels::protocol::kRingKinds - 1];
  return last.counters + last.counter_bytes();
}
}  // namespace

GroupTransport::GroupTransport(Group& group, const kernels::protocol::BufferLayout& layout, std::size_t bytes,
                               int workers, Duration timeout)
    : GroupTransport(group, bytes, signals_end(layout), workers, timeout, "ferry-buffer") {}

GroupTransport::GroupTransport(Group& group, std::size_t bytes, std::size_t signals_end, int workers,
                               Duration timeout, const std::string& tag, bool reserve_pages,
                               bool isolate_peer_failures)
    : group_(group) {
  t::Peers peers = peers_of(group, timeout);
  // A fabric that isolates a failed peer asks which peers the store counted dead, by this group's numbering.
  if (isolate_peer_failures) {
    if (auto watch = group.member_watch()) peers.watch = watch.get();  // the group outlives its transports
  }
  shared_ = t::make_shm_peer_memory(peers, bytes, tag, reserve_pages);
  node_ = std::make_unique<NodeView>(*shared_);
  if (group.num_nodes() == 1) {
    health_ = std::make_unique<Health>(group, nullptr);
    return;
  }
  if (signals_end > std::numeric_limits<std::uint32_t>::max()) {
    fail(Errc::internal, "signal words beyond the first 4 GiB of the region cannot be signalled");
  }
  t::FabricOptions fabric_options;
  fabric_options.kind = t::fabric_kind_from_env();
  fabric_options.isolate_peer_failures = isolate_peer_failures && fabric_options.kind == t::FabricKind::ucx;
  isolating_ = fabric_options.isolate_peer_failures;
  std::unique_ptr<t::Fabric> fabric = t::make_fabric(peers, fabric_options);
  t::RegionId region = fabric->register_region(shared_->local(), bytes, t::MemoryKind::host);
  fabric->connect();
  t::ProxyOptions proxy_options;
  proxy_options.rings = workers;
  proxy_options.memory = t::RingMemory::host;
  proxy_options.timeout = timeout;
  proxy_ = std::make_unique<t::Proxy>(std::move(fabric), proxy_options);
  remote_ = std::make_unique<ProxyMemory>(*proxy_, region, group.failure_watch().get());
  health_ = std::make_unique<Health>(group, proxy_.get());
}

GroupTransport::~GroupTransport() {
  // Once the job has failed, the others are on their way out (or dead): waiting for our puts to land and
  // meeting them would only wait for the dead. Unless the fabric isolates failed peers: then the survivors
  // go on without the dead and may still wait for our last rows. Those are handed to the fabric (a short,
  // bounded wait: no flush command, whose wait for a frozen peer would last the whole timeout), and the
  // endpoints' closing delivers them to the live peers (bounded by the fabric's teardown bound).
  const std::shared_ptr<t::StoreWatch> watch = group_.failure_watch();
  const bool failed = watch && !watch->failure().empty();
  try {
    if (proxy_ && !failed) {
      for (int ring = 0; ring < proxy_->num_rings(); ++ring) {
        t::ProducerRing& producer = proxy_->ring(ring);
        producer.post(t::make_flush());
        producer.wait_completed(producer.posted());
      }
    } else if (proxy_ && isolating_) {
      constexpr auto kHandOverBound = std::chrono::seconds(2);
      const Deadline deadline(kHandOverBound);
      for (int ring = 0; ring < proxy_->num_rings(); ++ring) {
        t::ProducerRing& producer = proxy_->ring(ring);
        while (producer.completed() < producer.posted() && !deadline.expired()) {
          producer.check_error();
          std::this_thread::sleep_for(std::chrono::microseconds(200));
        }
      }
    }
    if (!failed) group_.barrier("ferry/buffer/close");
  } catch (...) {  // a destructor cannot report; the operations that failed already have
  }
  health_.reset();
  remote_.reset();
  proxy_.reset();
  node_.reset();
  shared_.reset();
}

h::RankMemory GroupTransport::memory() {
  h::RankMemory memory;
  memory.local = static_cast<std::byte*>(shared_->local());
  memory.bytes = shared_->bytes();
  memory.node = node_.get();
  memory.remote = remote_.get();
  memory.health = health_.get();
  return memory;
}

}  // namespace ferry
