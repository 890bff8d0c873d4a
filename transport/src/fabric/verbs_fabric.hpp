// The verbs backend: libibverbs RC queue pairs, RDMA WRITE and 64-bit fetch-and-add, on InfiniBand or RoCE.
//
// Per peer `qps_per_peer` RC QPs (self included: RC loops back through the HCA); operations go round-robin
// over them, a put_signal's write and atomic on one QP. put_signal = RDMA WRITE, then ATOMIC FETCH_AND_ADD
// with IBV_SEND_FENCE on the same QP. We chose the atomic over WRITE_WITH_IMM because the signal then lands
// as a plain counter in the target's memory, the same contract the ucx backend and the protocol's rings use;
// an immediate would need the target to post receives and turn CQ entries into counter updates on its CPU. A
// responder executes one QP's requests in order, so the add follows the write's data; the fence additionally
// keeps the atomic behind earlier reads and atomics.
//
// Send-side completions are signalled selectively (every sq_depth/4 WRs, and always for fetch_add and flush);
// RC completes a QP's WRs in order, so one completion retires every earlier WR of that QP. Any error
// completion breaks the fabric with an Error naming the peer, the QP and ibv_wc_status_str.
#pragma once

#include <infiniband/verbs.h>

#include <deque>
#include <memory>
#include <string>
#include <vector>

#include "fabric/fabric_common.hpp"

namespace ferry::transport {

class VerbsFabric final : public Fabric {
 public:
  VerbsFabric(const Peers& peers, const FabricOptions& options);
  ~VerbsFabric() override;
  VerbsFabric(const VerbsFabric&) = delete;
  VerbsFabric& operator=(const VerbsFabric&) = delete;

  FabricKind kind() const override { return FabricKind::verbs; }
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

 private:
  struct ContextCloser {
    void operator()(ibv_context* context) const { ibv_close_device(context); }
  };
  struct PdDeleter {
    void operator()(ibv_pd* pd) const { ibv_dealloc_pd(pd); }
  };
  struct CqDeleter {
    void operator()(ibv_cq* cq) const { ibv_destroy_cq(cq); }
  };
  struct QpDeleter {
    void operator()(ibv_qp* qp) const { ibv_destroy_qp(qp); }
  };
  struct MrDeleter {
    void operator()(ibv_mr* mr) const { ibv_dereg_mr(mr); }
  };
  struct MemoryReleaser {
    MemoryReleaser() noexcept : kind(MemoryKind::host) {}
    explicit MemoryReleaser(MemoryKind memory_kind) noexcept : kind(memory_kind) {}
    void operator()(void* memory) const;
    MemoryKind kind;
  };

  struct Region {
    void* base = nullptr;
    std::size_t bytes = 0;
    MemoryKind kind = MemoryKind::host;
    std::unique_ptr<void, MemoryReleaser> owned;  // memory this fabric allocated (freed after the MR)
    std::unique_ptr<ibv_mr, MrDeleter> mr;
    std::string registration;  // how it was registered ("ibv_reg_mr", "dma-buf"), for description()
  };
  struct RemoteRegion {
    std::uint64_t address = 0;
    std::size_t bytes = 0;
    std::uint32_t rkey = 0;
  };
  // One posted WR awaiting retirement; `ticket` is 0 for WRs that end no ledger operation.
  struct PostedWr {
    std::uint64_t sequence = 0;
    std::uint64_t ticket = 0;
  };
  struct QueuePair {
    std::unique_ptr<ibv_qp, QpDeleter> qp;
    int peer = 0;
    int index = 0;
    std::uint32_t psn = 0;
    std::uint64_t next_sequence = 1;
    std::uint64_t retired_sequence = 0;  // every WR with a sequence <= this is complete
    std::uint32_t since_signal = 0;      // unsignalled WRs posted since the last signalled one
    std::deque<PostedWr> posted;
  };
  struct PeerState {
    std::vector<RemoteRegion> regions;
    std::size_t in_flight = 0;
    std::uint32_t next_qp = 0;
  };

  void open_device();
  void pick_gid();
  void create_queue_pairs();
  void connect_queue_pair(QueuePair& qp, std::uint16_t remote_lid, const ibv_gid& remote_gid,
                          std::uint32_t remote_qpn, std::uint32_t remote_psn, ibv_mtu mtu);
  void register_memory(Region& region);

  void check_usable(const char* op) const;
  [[noreturn]] void break_fabric(Errc code, const std::string& why);
  const RemoteRegion& remote_region(const char* op, int peer, RegionId region, std::size_t offset,
                                    std::size_t bytes) const;
  const Region& local_region(const char* op, RegionId region, std::size_t offset, std::size_t bytes) const;
  QueuePair& qp_for(int peer) {
    return *qps_[qp_slot(peer, peer_states_[peer].next_qp++ % options_.qps_per_peer)];
  }
  std::size_t qp_slot(int peer, int index) const {
    return static_cast<std::size_t>(peer) * static_cast<std::size_t>(options_.qps_per_peer) + index;
  }
  void wait_for_peer_room(const char* op, int peer);
  void wait_for_queue_room(const char* op, QueuePair& qp, std::size_t wrs);
  // Posts one WR; `ticket` != 0 marks the WR that ends a ledger operation. Returns its sequence number.
  std::uint64_t post(const char* op, QueuePair& qp, ibv_send_wr& wr, std::uint64_t ticket, bool force_signal);
  void post_write(const char* op, QueuePair& qp, const Region& source, std::size_t local_offset,
                  const RemoteRegion& target, std::size_t remote_offset, std::size_t bytes,
                  std::uint64_t ticket);
  std::uint64_t post_fetch_add(const char* op, QueuePair& qp, const RemoteRegion& target, std::size_t offset,
                               std::uint64_t add, std::uint64_t* result, std::uint64_t ticket,
                               bool force_signal, bool fence);
  void retire(QueuePair& qp, std::uint64_t sequence);
  std::size_t poll_completions();
  std::string wait_timeout_text(const char* what) const;

  Peers peers_;
  FabricOptions options_;
  std::string device_name_;
  std::uint8_t port_ = 1;
  ibv_port_attr port_attr_{};
  ibv_device_attr device_attr_{};
  int gid_index_ = -1;  // -1: no GRH (InfiniBand with LIDs)
  ibv_gid gid_{};
  std::uint32_t sq_depth_ = 0;
  std::uint32_t signal_interval_ = 1;
  std::uint32_t max_inline_ = 0;

  // Declaration order is teardown order reversed: QPs go first, the device last.
  std::unique_ptr<ibv_context, ContextCloser> context_;
  std::unique_ptr<ibv_pd, PdDeleter> pd_;
  std::deque<Region> regions_;
  std::unique_ptr<std::uint64_t[]> scratch_;  // [0]: discarded signal results, [1]: fetch_add result
  std::unique_ptr<ibv_mr, MrDeleter> scratch_mr_;
  std::unique_ptr<ibv_cq, CqDeleter> cq_;
  std::vector<std::unique_ptr<QueuePair>> qps_;  // [peer * qps_per_peer + index]

  std::vector<PeerState> peer_states_;
  detail::TicketLedger ledger_;
  std::string broken_;
  Errc broken_code_ = Errc::internal;
  bool connected_ = false;
};

}  // namespace ferry::transport
