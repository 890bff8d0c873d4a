// The UCX backend: UCP put/atomic/flush over whatever UCX finds (rc/dc and CUDA memory on clusters, tcp and
// shared memory here).
//
// One context and one worker (UCS_THREAD_MODE_SINGLE) per fabric, one endpoint per rank (self included),
// error handling mode PEER so a dead peer fails requests and fires the endpoint's error callback instead of
// hanging. Regions are ucp_mem_map'ed (allocated by UCX when the caller passes no base); rkeys go through the
// store.
//
// Peer failures (fabric.hpp, "Failure model"): by default the first one breaks the fabric. With
// FabricOptions::isolate_peer_failures a failed peer is isolated instead: its endpoint is left alone (closed
// with force at teardown), its outstanding operations are counted complete (an abandoned Op ignores UCX's
// late callback), later operations to it complete at once, and flush() waits for the live peers only; a peer
// that completes nothing within the timeout (frozen) is isolated the same way.
//
// put_signal is put, ucp_worker_fence, atomic ADD. On tcp and shared memory UCX 1.13 emulates RMA and atomics
// with active messages on one lane per endpoint, which the target handles in order, so the fence keeps the
// signal behind the payload (tests/fabric checks it); on RDMA transports the fence orders the lane's
// operations.
//
// Write batches (ucx_write_batch.hpp): to a peer reached over tcp only, puts below kDirectPutBytes and signal
// adds from host memory are gathered into one active message per peer (forced eager, so it stays in line
// with the lane's other messages), sent when a signal ends it, when it is full, and at every progress(),
// flush() and fetch_add(); the target's AM handler writes it in order. A put of kDirectPutBytes or more is a
// ucp_put_nbx as before, behind the batch. flush() makes batches visible with a one-byte get per peer behind
// them. FERRY_UCX_BATCH=0 turns batching off (1, the default: on where the lanes are tcp, unless the user
// gave UCX several eager lanes or its new protocols, whose lane choice could let a signal overtake a batch).
#pragma once

#include <ucp/api/ucp.h>

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "fabric/fabric_common.hpp"
#include "fabric/ucx_write_batch.hpp"

namespace ferry::transport {

class UcxFabric final : public Fabric {
 public:
  UcxFabric(const Peers& peers, const FabricOptions& options);
  ~UcxFabric() override;
  UcxFabric(const UcxFabric&) = delete;
  UcxFabric& operator=(const UcxFabric&) = delete;

  FabricKind kind() const override { return FabricKind::ucx; }
  std::string description() const override;
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
  bool progress() override;
  void flush() override;
  void* region_base(RegionId region) const override;
  std::size_t region_bytes(RegionId region) const override;
  std::size_t failed_peer_count() const override { return failed_.size(); }
  std::vector<FailedPeer> failed_peers() const override { return failed_; }
  void fail_peer(int peer, const std::string& reason) override;

  // Whether this UCX was built with CUDA support (its cuda memory domain), so it can register GPU memory.
  bool cuda_memory_supported() const;

 private:
  void require_cuda_memory_support() const;

  struct ContextDeleter {
    void operator()(ucp_context_h context) const { ucp_cleanup(context); }
  };
  struct WorkerDeleter {
    void operator()(ucp_worker_h worker) const { ucp_worker_destroy(worker); }
  };

  struct Region {
    void* base = nullptr;
    std::size_t bytes = 0;
    MemoryKind kind = MemoryKind::host;
    ucp_mem_h memh = nullptr;
  };
  struct RemoteRegion {
    std::uint64_t address = 0;
    std::size_t bytes = 0;
    ucp_rkey_h rkey = nullptr;
  };
  struct Op;
  // Write batches (see the header comment). A Batch lives in batches_ (stable addresses) from its first write
  // until UCX reports the message sent; its ops finish then.
  struct Batch {
    UcxFabric* owner = nullptr;
    int peer = -1;
    write_batch::BatchHeader header;
    std::vector<write_batch::BatchEntry> entries;
    std::vector<ucp_dt_iov_t> iov;  // [0] header, [1] entries, then each put's source bytes
    std::vector<Op*> ops;
    Batch* next_free = nullptr;
  };
  struct PeerState {
    UcxFabric* owner = nullptr;
    int rank = 0;
    ucp_ep_h ep = nullptr;
    std::vector<RemoteRegion> regions;
    std::size_t in_flight = 0;
    ucs_status_t failure =
        UCS_OK;                  // set by the endpoint error callback, a failed request or the liveness check
    std::string failure_reason;  // when the liveness check found the process gone
    int pid = 0;                 // the peer's process id (meaningful on the same node only)
    bool same_node = false;
    bool isolated = false;      // isolate_peer_failures: failed, nothing more is sent to it
    bool batching = false;      // writes to it travel as write batches (tcp lanes only)
    Batch* open = nullptr;      // the batch being filled, not yet sent
    bool listed = false;        // in open_peers_
    bool unflushed = false;     // batches sent since the last flush()
    RegionId probe_region = 0;  // a byte a sent batch wrote: flush() reads it back behind the batches
    std::size_t probe_offset = 0;
    std::uint8_t probe_byte = 0;
  };
  // One posted operation (put_signal counts as one with two UCX requests). Lives in ops_, a pool with stable
  // addresses, because UCX callbacks point at it.
  struct Op {
    UcxFabric* owner = nullptr;
    std::uint64_t ticket = 0;
    int peer = -1;
    int outstanding = 0;
    std::uint64_t operand = 0;  // atomic operand: UCX may read it after the call returns
    std::uint64_t reply = 0;    // fetch_add's old value, written by UCX
    const char* what = "";
    Op* next_free = nullptr;
    bool abandoned = false;  // its peer was isolated: its ticket is finished, UCX's callbacks only free it
  };

  static constexpr std::size_t kDirectPutBytes = std::size_t{128} << 10;
  // With at most kBatchEntries entries a full batch stays within one of ferry's 256 KiB tcp segments.
  static constexpr std::size_t kBatchPayloadBytes = std::size_t{192} << 10;
  static constexpr std::size_t kBatchEntries = 1024;

  static void on_request_done(void* request, ucs_status_t status, void* user_data);
  static void on_batch_sent(void* request, ucs_status_t status, void* user_data);
  static ucs_status_t on_batch_received(void* arg, const void* header, std::size_t header_length, void* data,
                                        std::size_t length, const ucp_am_recv_param_t* param);
  static void on_endpoint_error(void* arg, ucp_ep_h ep, ucs_status_t status);

  ucp_context_h context() const { return context_.get(); }
  ucp_worker_h worker() const { return worker_.get(); }

  void set_up_context();
  void check_usable(const char* op) const;
  bool isolating() const { return options_.isolate_peer_failures; }
  // Whether the fabric may give `peer` up alone: it isolates failed peers, and the job's store names the peer
  // dead (Peers::watch, within kConfirmWait; without a watch that numbers ranks as this fabric does, the
  // fabric's own verdict stands). A live peer whose connection failed or that stalled breaks the fabric as
  // without isolation, so no live rank's writes are dropped silently.
  bool may_isolate(int peer) const;
  std::string peer_failure_text(int peer, const std::string& what) const;
  // `peer` failed (its state says how): breaks the fabric and throws, or, when it may (may_isolate), isolates
  // the peer.
  void peer_failed(int peer, const std::string& what);
  [[noreturn]] void break_for_peer(int peer, const std::string& what);
  // fetch_add (control path) when `peer` failed: throws; breaks the fabric unless isolating.
  [[noreturn]] void refuse_for_peer(int peer, const std::string& what);
  // Marks `peer` failed for good: its outstanding operations are abandoned (their tickets finished).
  void isolate(int peer, const std::string& reason);
  std::string failed_reason(int peer) const;
  // An operation to an isolated peer: a ticket, finished at once, nothing sent.
  std::uint64_t dropped();
  // put_signal's second request, not posted because its peer was isolated by the first.
  void skip_request(Op* op);
  // Throws (or, when isolating, isolates) for every peer whose failure is known.
  void throw_if_failed();
  void flush_live_peers();
  // Rate-limited: marks same-node peers whose process no longer exists as failed.
  void check_liveness();
  const RemoteRegion& remote_region(const char* op, int peer, RegionId region, std::size_t offset,
                                    std::size_t bytes) const;
  const Region& local_region(const char* op, RegionId region, std::size_t offset, std::size_t bytes) const;
  // Progresses until `peer` has room for one more operation (deadline: peers_.timeout).
  void wait_for_room(const char* op, int peer);
  Op* start_op(const char* what, int peer, int requests);
  // Accounts one UCX request of `op`: immediate completion, immediate failure or a request to wait for.
  void track(Op* op, ucs_status_ptr_t result);
  void request_done(Op* op, ucs_status_t status);
  ucp_request_param_t send_param(Op* op) const;
  // Batching: whether a write of `bytes` from `source` to `peer` joins its batch; the batch to add to (the
  // open one is sent first when `bytes` more would overflow it; the peer may be isolated on return).
  bool batches(int peer, const Region& source, std::size_t bytes) const;
  Batch* batch_for(int peer, std::size_t bytes);
  // A write joining `peer`'s batch: a put of `bytes` from `source` (none when 0), then `add` when given,
  // which ends the batch. Returns its ticket.
  struct BatchedAdd {
    RegionId region = 0;
    std::size_t offset = 0;
    std::uint64_t value = 0;
  };
  std::uint64_t batch_write(const char* what, int peer, void* source, RegionId remote,
                            std::size_t remote_offset, std::size_t bytes, const BatchedAdd* add = nullptr);
  void send_batch(int peer);
  void send_open_batches();
  void batch_sent(Batch* batch, ucs_status_t status);
  // Drops an isolated peer's unsent batch (its ops are abandoned).
  void drop_batch(int peer);
  // flush(): a one-byte get from every peer that was sent batches since the last flush, behind them on the
  // lane, so the flush that follows covers their arrival.
  void probe_batches();
  // A received batch was refused: the fabric is broken with `problem`.
  void refuse_batch(const std::string& problem);
  std::string transports_to(int peer) const;
  void close_endpoints() noexcept;
  void release_memory() noexcept;

  Peers peers_;
  FabricOptions options_;
  std::vector<std::string> settings_;  // UCX settings ferry chose (for description())
  std::unique_ptr<std::remove_pointer_t<ucp_context_h>, ContextDeleter> context_;
  std::unique_ptr<std::remove_pointer_t<ucp_worker_h>, WorkerDeleter> worker_;
  std::vector<Region> regions_;
  std::deque<PeerState> peer_states_;  // stable addresses: error callbacks point at them
  std::deque<Op> ops_;
  Op* free_ops_ = nullptr;
  std::deque<Batch> batches_;
  Batch* free_batches_ = nullptr;
  std::vector<int> open_peers_;   // peers whose batch may be open: progress() sends theirs, not every peer's
  bool batching_allowed_ = true;  // FERRY_UCX_BATCH
  std::vector<write_batch::TargetRegion> target_regions_;  // this rank's regions, as batches write them
  detail::TicketLedger ledger_;
  std::size_t pending_requests_ = 0;
  std::vector<FailedPeer> failed_;  // isolated peers, in the order they failed
  std::string broken_;              // non-empty once a failure made the fabric unusable
  Errc broken_code_ = Errc::internal;
  bool connected_ = false;
  std::uint32_t liveness_countdown_ = 0;
  Clock::time_point next_liveness_check_{};
};

}  // namespace ferry::transport
