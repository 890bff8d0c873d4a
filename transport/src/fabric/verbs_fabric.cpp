#include "fabric/verbs_fabric.hpp"

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <random>

#include "fabric/ibv_device_list.hpp"
#include "ferry/core/env.hpp"
#include "ferry/core/error.hpp"

#if defined(FERRY_HAVE_CUDA)
#include <cuda.h>
#include <cuda_runtime_api.h>
#endif

namespace ferry::transport {
namespace {

using detail::peer_label;

using namespace std::chrono_literals;

constexpr int kAccess =
    IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
constexpr int kSequenceBits = 40;  // wr_id = qp slot << 40 | sequence
constexpr std::uint64_t kSequenceMask = (std::uint64_t{1} << kSequenceBits) - 1;
constexpr std::uint32_t kMaxRdAtomic = 16;

std::string errno_text(int err) {
  return std::strerror(err);
}

bool port_is_active(ibv_context* context, std::uint8_t port, ibv_port_attr* attr) {
  return ibv_query_port(context, port, attr) == 0 && attr->state == IBV_PORT_ACTIVE;
}

// An IPv4-mapped IPv6 address (::ffff:a.b.c.d), the GID RoCE v2 carries for an interface's IPv4 address.
bool ipv4_mapped(const ibv_gid& gid) {
  for (int i = 0; i < 10; ++i) {
    if (gid.raw[i] != 0) return false;
  }
  return gid.raw[10] == 0xff && gid.raw[11] == 0xff;
}

bool gid_is_zero(const ibv_gid& gid) {
  for (auto byte : gid.raw) {
    if (byte != 0) return false;
  }
  return true;
}

std::size_t page_size() {
  long size = sysconf(_SC_PAGESIZE);
  return size > 0 ? static_cast<std::size_t>(size) : 4096;
}

}  // namespace

void VerbsFabric::MemoryReleaser::operator()(void* memory) const {
#if defined(FERRY_HAVE_CUDA)
  if (kind == MemoryKind::cuda) {
    cudaFree(memory);
    return;
  }
#endif
  std::free(memory);
}

VerbsFabric::VerbsFabric(const Peers& peers, const FabricOptions& options)
    : peers_(peers), options_(options) {
  open_device();
  pick_gid();
  pd_.reset(ibv_alloc_pd(context_.get()));
  if (!pd_) fail(Errc::system, "verbs: ibv_alloc_pd on " + device_name_ + ": " + errno_text(errno));
  scratch_.reset(new std::uint64_t[2]());
  scratch_mr_.reset(ibv_reg_mr(pd_.get(), scratch_.get(), 2 * sizeof(std::uint64_t), IBV_ACCESS_LOCAL_WRITE));
  if (!scratch_mr_) fail(Errc::system, "verbs: ibv_reg_mr of the atomic scratch words: " + errno_text(errno));
  create_queue_pairs();
}

VerbsFabric::~VerbsFabric() = default;

void VerbsFabric::open_device() {
  int count = 0;
  errno = 0;
  detail::DeviceList list(ibv_get_device_list(&count));
  if (!list || count == 0) {
    int err = errno;
    fail(Errc::unsupported, std::string("no RDMA device: ibv_get_device_list: ") +
                                (!list ? (err ? errno_text(err) : std::string("returned no list"))
                                       : std::string("found no devices")));
  }
  auto wanted = env::get("FERRY_IB_DEVICE");  // "mlx5_0" or "mlx5_0:1"
  std::string wanted_name;
  int wanted_port = 0;
  if (wanted && !wanted->empty()) {
    wanted_name = *wanted;
    if (auto colon = wanted_name.find(':'); colon != std::string::npos) {
      wanted_port = std::atoi(wanted_name.c_str() + colon + 1);
      wanted_name.resize(colon);
      if (wanted_port < 1 || wanted_port > 255) {
        fail(Errc::invalid_argument, "FERRY_IB_DEVICE='" + *wanted + "': the port after ':' must be 1..255");
      }
    }
  }
  std::string seen;
  for (int i = 0; i < count; ++i) {
    ibv_device* device = list.get()[i];
    std::string name = ibv_get_device_name(device);
    seen += (seen.empty() ? "" : ", ") + name;
    if (!wanted_name.empty() && name != wanted_name) continue;
    std::unique_ptr<ibv_context, ContextCloser> context(ibv_open_device(device));
    if (!context) {
      if (!wanted_name.empty())
        fail(Errc::system, "verbs: ibv_open_device " + name + ": " + errno_text(errno));
      continue;
    }
    ibv_device_attr attr{};
    if (ibv_query_device(context.get(), &attr) != 0) continue;
    for (int port = 1; port <= attr.phys_port_cnt; ++port) {
      if (wanted_port != 0 && port != wanted_port) continue;
      ibv_port_attr port_attr{};
      if (!port_is_active(context.get(), static_cast<std::uint8_t>(port), &port_attr)) continue;
      context_ = std::move(context);
      device_attr_ = attr;
      port_attr_ = port_attr;
      port_ = static_cast<std::uint8_t>(port);
      device_name_ = name;
      if (device_attr_.atomic_cap == IBV_ATOMIC_NONE) {
        fail(Errc::unsupported, "verbs: device " + name + " offers no RDMA atomics (put_signal needs them)");
      }
      return;
    }
  }
  fail(Errc::unsupported, std::string("no RDMA device: no active port on ") +
                              (wanted_name.empty() ? "any device" : "FERRY_IB_DEVICE=" + *wanted) +
                              " (found: " + seen + ")");
}

void VerbsFabric::pick_gid() {
  auto forced = env::get_int("FERRY_IB_GID_INDEX", 0, 255);
  const bool ethernet = port_attr_.link_layer == IBV_LINK_LAYER_ETHERNET;
  if (forced) {
    gid_index_ = static_cast<int>(*forced);
  } else if (!ethernet) {
    gid_index_ = -1;  // InfiniBand: route by LID, no GRH within a subnet
  } else {
    // RoCE: prefer a RoCE v2 GID holding an IPv4 address (routable, what the cluster's IPs use), else any
    // RoCE v2.
    int first_v2 = -1;
    for (int index = 0; index < port_attr_.gid_tbl_len && gid_index_ < 0; ++index) {
      ibv_gid_entry entry{};
      if (ibv_query_gid_ex(context_.get(), port_, static_cast<std::uint32_t>(index), &entry, 0) != 0)
        continue;
      if (entry.gid_type != IBV_GID_TYPE_ROCE_V2) continue;
      if (ipv4_mapped(entry.gid)) gid_index_ = index;
      if (first_v2 < 0) first_v2 = index;
    }
    if (gid_index_ < 0) gid_index_ = first_v2 >= 0 ? first_v2 : 0;
  }
  if (gid_index_ >= 0) {
    if (ibv_query_gid(context_.get(), port_, gid_index_, &gid_) != 0 || gid_is_zero(gid_)) {
      fail(Errc::invalid_argument, "verbs: GID index " + std::to_string(gid_index_) + " of " + device_name_ +
                                       " port " + std::to_string(port_) +
                                       " is empty (set FERRY_IB_GID_INDEX to a valid entry)");
    }
  }
}

void VerbsFabric::create_queue_pairs() {
  // Room for every operation allowed in flight, two WRs each (put_signal), within the device's limit.
  std::size_t wanted = std::max<std::size_t>(16, 2 * options_.max_in_flight);
  sq_depth_ = static_cast<std::uint32_t>(std::min<std::size_t>(wanted, device_attr_.max_qp_wr));
  signal_interval_ = std::max<std::uint32_t>(1, sq_depth_ / 4);
  std::size_t total_qps = static_cast<std::size_t>(peers_.world_size) * options_.qps_per_peer;
  int cqe = static_cast<int>(std::min<std::size_t>(total_qps * sq_depth_, device_attr_.max_cqe));
  cq_.reset(ibv_create_cq(context_.get(), cqe, nullptr, nullptr, 0));
  if (!cq_) fail(Errc::system, "verbs: ibv_create_cq(" + std::to_string(cqe) + "): " + errno_text(errno));

  std::mt19937 random(std::random_device{}());
  peer_states_.resize(peers_.world_size);
  for (int peer = 0; peer < peers_.world_size; ++peer) {
    for (int index = 0; index < options_.qps_per_peer; ++index) {
      ibv_qp_init_attr init{};
      init.send_cq = cq_.get();
      init.recv_cq = cq_.get();
      init.qp_type = IBV_QPT_RC;
      init.sq_sig_all = 0;
      init.cap.max_send_wr = sq_depth_;
      init.cap.max_recv_wr = 1;  // nothing is ever received: writes and atomics only
      init.cap.max_send_sge = 1;
      init.cap.max_recv_sge = 1;
      init.cap.max_inline_data = static_cast<std::uint32_t>(options_.max_inline_bytes);
      auto qp = std::make_unique<QueuePair>();
      qp->qp.reset(ibv_create_qp(pd_.get(), &init));
      if (!qp->qp && init.cap.max_inline_data > 0) {
        init.cap.max_inline_data = 0;  // some devices refuse inline data; go without
        qp->qp.reset(ibv_create_qp(pd_.get(), &init));
      }
      if (!qp->qp) {
        fail(Errc::system, "verbs: ibv_create_qp for " + peer_label(peers_, peer) + " on " + device_name_ +
                               ": " + errno_text(errno));
      }
      max_inline_ = init.cap.max_inline_data;
      qp->peer = peer;
      qp->index = index;
      qp->psn = random() & 0xffffff;

      ibv_qp_attr attr{};
      attr.qp_state = IBV_QPS_INIT;
      attr.pkey_index = 0;
      attr.port_num = port_;
      attr.qp_access_flags = IBV_ACCESS_REMOTE_WRITE | IBV_ACCESS_REMOTE_READ | IBV_ACCESS_REMOTE_ATOMIC;
      if (int err = ibv_modify_qp(qp->qp.get(), &attr,
                                  IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_ACCESS_FLAGS)) {
        fail(Errc::system, "verbs: QP to " + peer_label(peers_, peer) + " -> INIT: " + errno_text(err));
      }
      qps_.push_back(std::move(qp));
    }
  }
}

void VerbsFabric::connect_queue_pair(QueuePair& qp, std::uint16_t remote_lid, const ibv_gid& remote_gid,
                                     std::uint32_t remote_qpn, std::uint32_t remote_psn, ibv_mtu mtu) {
  ibv_qp_attr attr{};
  attr.qp_state = IBV_QPS_RTR;
  attr.path_mtu = mtu;
  attr.dest_qp_num = remote_qpn;
  attr.rq_psn = remote_psn;
  attr.max_dest_rd_atomic = static_cast<std::uint8_t>(
      std::min<std::uint32_t>(kMaxRdAtomic, static_cast<std::uint32_t>(device_attr_.max_qp_rd_atom)));
  attr.min_rnr_timer = 12;
  attr.ah_attr.dlid = remote_lid;
  attr.ah_attr.sl = 0;
  attr.ah_attr.src_path_bits = 0;
  attr.ah_attr.port_num = port_;
  if (gid_index_ >= 0) {
    attr.ah_attr.is_global = 1;
    attr.ah_attr.grh.dgid = remote_gid;
    attr.ah_attr.grh.sgid_index = static_cast<std::uint8_t>(gid_index_);
    attr.ah_attr.grh.hop_limit = 64;
    attr.ah_attr.grh.traffic_class =
        static_cast<std::uint8_t>(env::get_int("FERRY_IB_TRAFFIC_CLASS", 0, 255).value_or(0));
  }
  std::string where = "verbs: QP " + std::to_string(qp.index) + " to " + peer_label(peers_, qp.peer);
  if (int err = ibv_modify_qp(qp.qp.get(), &attr,
                              IBV_QP_STATE | IBV_QP_AV | IBV_QP_PATH_MTU | IBV_QP_DEST_QPN | IBV_QP_RQ_PSN |
                                  IBV_QP_MAX_DEST_RD_ATOMIC | IBV_QP_MIN_RNR_TIMER)) {
    fail(Errc::system, where + " -> RTR: " + errno_text(err) +
                           (gid_index_ >= 0 ? " (GID index " + std::to_string(gid_index_) +
                                                  "; FERRY_IB_GID_INDEX picks another)"
                                            : std::string()));
  }
  attr = {};
  attr.qp_state = IBV_QPS_RTS;
  attr.timeout =
      14;  // 4.096 us * 2^14 = 67 ms per try, 7 tries: a dead peer shows within about half a second
  attr.retry_cnt = 7;
  attr.rnr_retry = 7;
  attr.sq_psn = qp.psn;
  attr.max_rd_atomic = static_cast<std::uint8_t>(
      std::min<std::uint32_t>(kMaxRdAtomic, static_cast<std::uint32_t>(device_attr_.max_qp_init_rd_atom)));
  if (int err = ibv_modify_qp(qp.qp.get(), &attr,
                              IBV_QP_STATE | IBV_QP_TIMEOUT | IBV_QP_RETRY_CNT | IBV_QP_RNR_RETRY |
                                  IBV_QP_SQ_PSN | IBV_QP_MAX_QP_RD_ATOMIC)) {
    fail(Errc::system, where + " -> RTS: " + errno_text(err));
  }
}

void VerbsFabric::register_memory(Region& region) {
#if defined(FERRY_HAVE_CUDA)
  if (region.kind == MemoryKind::cuda) {
    // dma-buf: the upstream path for GPU memory (no nvidia-peermem module needed). The range handed to
    // cuMemGetHandleForAddressRange must be page aligned; the MR covers exactly the region inside it.
    using GetHandle = CUresult (*)(void*, CUdeviceptr, size_t, CUmemRangeHandleType, unsigned long long);
    void* entry = nullptr;
    cudaDriverEntryPointQueryResult found{};
    if (cudaGetDriverEntryPointByVersion("cuMemGetHandleForAddressRange", &entry, 11070, cudaEnableDefault,
                                         &found) == cudaSuccess &&
        found == cudaDriverEntryPointSuccess && entry != nullptr) {
      auto get_handle = reinterpret_cast<GetHandle>(entry);
      auto address = reinterpret_cast<std::uintptr_t>(region.base);
      std::uintptr_t start = address & ~(page_size() - 1);
      std::size_t length = (address + region.bytes - start + page_size() - 1) & ~(page_size() - 1);
      int fd = -1;
      if (get_handle(&fd, static_cast<CUdeviceptr>(start), length, CU_MEM_RANGE_HANDLE_TYPE_DMA_BUF_FD, 0) ==
              CUDA_SUCCESS &&
          fd >= 0) {
        region.mr.reset(ibv_reg_dmabuf_mr(pd_.get(), address - start, region.bytes, address, fd, kAccess));
        close(fd);
        if (region.mr) {
          region.registration = "dma-buf";
          return;
        }
      }
    }
    // Fall through: nvidia-peermem lets plain ibv_reg_mr pin GPU memory.
  }
#endif
  region.mr.reset(ibv_reg_mr(pd_.get(), region.base, region.bytes, kAccess));
  if (!region.mr) {
    int err = errno;
    std::string hint;
    if (err == ENOMEM || err == EPERM) hint = " (pinned memory is limited by `ulimit -l`)";
    if (region.kind == MemoryKind::cuda)
      hint = " (GPU memory needs dma-buf support or the nvidia-peermem module)";
    fail(Errc::system, "verbs: ibv_reg_mr of " + std::to_string(region.bytes) + " bytes at " +
                           std::to_string(reinterpret_cast<std::uintptr_t>(region.base)) + ": " +
                           errno_text(err) + hint);
  }
  region.registration = region.kind == MemoryKind::cuda ? "peer memory" : "ibv_reg_mr";
}

RegionId VerbsFabric::register_region(void* base, std::size_t bytes, MemoryKind kind) {
  if (connected_) fail(Errc::invalid_argument, "verbs fabric: register_region after connect()");
  if (bytes == 0) fail(Errc::invalid_argument, "verbs fabric: register_region of 0 bytes");
  Region& region = regions_.emplace_back();
  region.kind = kind;
  region.bytes = bytes;
  region.base = base;
  try {
    if (base == nullptr) {
      if (kind == MemoryKind::host) {
        std::size_t rounded = (bytes + page_size() - 1) & ~(page_size() - 1);
        void* memory = std::aligned_alloc(page_size(), rounded);
        if (memory == nullptr)
          fail(Errc::system, "verbs: cannot allocate " + std::to_string(bytes) + " bytes");
        std::memset(memory, 0, rounded);
        region.owned = std::unique_ptr<void, MemoryReleaser>(memory, MemoryReleaser{kind});
      } else {
#if defined(FERRY_HAVE_CUDA)
        void* memory = nullptr;
        if (cudaError_t err = cudaMalloc(&memory, bytes); err != cudaSuccess) {
          fail(Errc::system, "verbs: cudaMalloc(" + std::to_string(bytes) + "): " + cudaGetErrorString(err));
        }
        region.owned = std::unique_ptr<void, MemoryReleaser>(memory, MemoryReleaser{kind});
        cudaMemset(memory, 0, bytes);
#else
        fail(Errc::unsupported, "verbs: cannot allocate cuda memory in a build without CUDA");
#endif
      }
      region.base = region.owned.get();
    }
    register_memory(region);
  } catch (...) {
    regions_.pop_back();
    throw;
  }
  return static_cast<RegionId>(regions_.size() - 1);
}

void VerbsFabric::connect() {
  if (connected_) fail(Errc::invalid_argument, "verbs fabric: connect() called twice");
  // Mine: port identity, then {qpn, psn} of the QP I use towards every (peer, index), then my regions.
  detail::BlobWriter writer;
  writer.u32(port_attr_.lid);
  writer.u32(static_cast<std::uint32_t>(port_attr_.active_mtu));
  writer.bytes(gid_.raw, sizeof(gid_.raw));
  for (const auto& qp : qps_) {
    writer.u32(qp->qp->qp_num);
    writer.u32(qp->psn);
  }
  writer.u32(static_cast<std::uint32_t>(regions_.size()));
  for (const Region& region : regions_) {
    writer.u64(reinterpret_cast<std::uintptr_t>(region.base));
    writer.u64(region.bytes);
    writer.u32(region.mr->rkey);
  }
  auto all = peers_.store->all_gather("ferry/fabric/verbs/descriptors", peers_.rank, peers_.world_size,
                                      writer.take(), peers_.timeout);
  for (int peer = 0; peer < peers_.world_size; ++peer) {
    detail::BlobReader reader(all[peer], "verbs descriptors of rank " + std::to_string(peer));
    auto lid = static_cast<std::uint16_t>(reader.u32());
    auto mtu = static_cast<ibv_mtu>(std::min<std::uint32_t>(reader.u32(), port_attr_.active_mtu));
    Bytes gid_bytes = reader.bytes();
    if (gid_bytes.size() != sizeof(ibv_gid)) {
      fail(Errc::protocol, "verbs descriptors of rank " + std::to_string(peer) + ": GID of " +
                               std::to_string(gid_bytes.size()) + " bytes");
    }
    ibv_gid gid{};
    std::memcpy(gid.raw, gid_bytes.data(), sizeof(gid.raw));
    for (int other = 0; other < peers_.world_size; ++other) {
      for (int index = 0; index < options_.qps_per_peer; ++index) {
        std::uint32_t qpn = reader.u32();
        std::uint32_t psn = reader.u32();
        // The peer's QP aimed at me pairs with my QP aimed at the peer.
        if (other == peers_.rank) connect_queue_pair(*qps_[qp_slot(peer, index)], lid, gid, qpn, psn, mtu);
      }
    }
    std::uint32_t count = reader.u32();
    if (count != regions_.size()) {
      fail(Errc::invalid_argument,
           "verbs fabric: rank " + std::to_string(peer) + " registered " + std::to_string(count) +
               " regions but rank " + std::to_string(peers_.rank) + " registered " +
               std::to_string(regions_.size()) + " (every rank registers the same sequence)");
    }
    for (std::uint32_t i = 0; i < count; ++i) {
      RemoteRegion& remote = peer_states_[peer].regions.emplace_back();
      remote.address = reader.u64();
      remote.bytes = reader.u64();
      remote.rkey = reader.u32();
    }
    reader.expect_end();
  }
  connected_ = true;
  // A QP may only be written to once its partner reached RTR.
  fabric_barrier(*this, peers_, "verbs/connected");
}

std::string VerbsFabric::description() const {
  std::string text = "verbs " + device_name_ + ":" + std::to_string(port_) +
                     (port_attr_.link_layer == IBV_LINK_LAYER_ETHERNET ? " RoCE" : " InfiniBand");
  if (gid_index_ >= 0) text += " gid " + std::to_string(gid_index_);
  text += ", " + std::to_string(options_.qps_per_peer) + " RC QP(s)/peer, sq " + std::to_string(sq_depth_) +
          ", inline " + std::to_string(max_inline_) + " B";
  for (const Region& region : regions_) {
    if (region.kind == MemoryKind::cuda) {
      text += ", GPU memory via " + region.registration;
      break;
    }
  }
  return text;
}

void VerbsFabric::check_usable(const char* op) const {
  if (!broken_.empty()) throw Error(broken_code_, broken_);
  if (!connected_) fail(Errc::invalid_argument, std::string("verbs fabric: ") + op + " before connect()");
}

void VerbsFabric::break_fabric(Errc code, const std::string& why) {
  if (broken_.empty()) {
    broken_code_ = code;
    broken_ = why;
  }
  throw Error(broken_code_, broken_);
}

const VerbsFabric::RemoteRegion& VerbsFabric::remote_region(const char* op, int peer, RegionId region,
                                                            std::size_t offset, std::size_t bytes) const {
  detail::check_peer(peers_, peer, op);
  const auto& regions = peer_states_[peer].regions;
  if (region >= regions.size()) {
    fail(Errc::invalid_argument,
         std::string(op) + ": rank " + std::to_string(peer) + " has no region " + std::to_string(region));
  }
  detail::check_range(op, "remote", peer, region, offset, bytes, regions[region].bytes);
  return regions[region];
}

const VerbsFabric::Region& VerbsFabric::local_region(const char* op, RegionId region, std::size_t offset,
                                                     std::size_t bytes) const {
  if (region >= regions_.size()) {
    fail(Errc::invalid_argument, std::string(op) + ": no local region " + std::to_string(region));
  }
  detail::check_range(op, "local", peers_.rank, region, offset, bytes, regions_[region].bytes);
  return regions_[region];
}

std::string VerbsFabric::wait_timeout_text(const char* what) const {
  return "verbs: " + std::string(what) + " on rank " + std::to_string(peers_.rank) + " timed out after " +
         std::to_string(std::chrono::duration_cast<std::chrono::seconds>(peers_.timeout).count()) +
         " s with " + std::to_string(ledger_.last_issued() - ledger_.completed()) + " operations outstanding";
}

void VerbsFabric::wait_for_peer_room(const char* op, int peer) {
  if (peer_states_[peer].in_flight < options_.max_in_flight) return;
  Deadline deadline(peers_.timeout);
  Backoff backoff;
  while (peer_states_[peer].in_flight >= options_.max_in_flight) {
    if (poll_completions() > 0) {
      backoff.reset();
      continue;
    }
    if (deadline.expired()) {
      break_fabric(Errc::timeout,
                   wait_timeout_text(op) + " (waiting for room towards " + peer_label(peers_, peer) + ")");
    }
    backoff.pause();
  }
}

void VerbsFabric::wait_for_queue_room(const char* op, QueuePair& qp, std::size_t wrs) {
  if (qp.posted.size() + wrs <= sq_depth_) return;
  Deadline deadline(peers_.timeout);
  Backoff backoff;
  while (qp.posted.size() + wrs > sq_depth_) {
    if (poll_completions() > 0) {
      backoff.reset();
      continue;
    }
    if (deadline.expired()) {
      break_fabric(Errc::timeout, wait_timeout_text(op) + " (send queue " + std::to_string(qp.index) +
                                      " to " + peer_label(peers_, qp.peer) + " stays full)");
    }
    backoff.pause();
  }
}

std::uint64_t VerbsFabric::post(const char* op, QueuePair& qp, ibv_send_wr& wr, std::uint64_t ticket,
                                bool force_signal) {
  wait_for_queue_room(op, qp, 1);
  std::uint64_t sequence = qp.next_sequence++;
  bool signal = force_signal || ++qp.since_signal >= signal_interval_;
  if (signal) {
    wr.send_flags |= IBV_SEND_SIGNALED;
    qp.since_signal = 0;
  }
  wr.wr_id = (static_cast<std::uint64_t>(qp_slot(qp.peer, qp.index)) << kSequenceBits) | sequence;
  wr.next = nullptr;
  ibv_send_wr* bad = nullptr;
  if (int err = ibv_post_send(qp.qp.get(), &wr, &bad)) {
    break_fabric(Errc::system, "verbs: " + std::string(op) + " to " + peer_label(peers_, qp.peer) +
                                   ": ibv_post_send on QP " + std::to_string(qp.index) + ": " +
                                   errno_text(err));
  }
  qp.posted.push_back({sequence, ticket});
  return sequence;
}

void VerbsFabric::post_write(const char* op, QueuePair& qp, const Region& source, std::size_t local_offset,
                             const RemoteRegion& target, std::size_t remote_offset, std::size_t bytes,
                             std::uint64_t ticket) {
  // One WR per max_msg_sz piece; only the last one ends the operation.
  const std::size_t piece = std::max<std::size_t>(port_attr_.max_msg_sz, 4096);
  for (std::size_t done = 0; done < bytes;) {
    std::size_t length = std::min(piece, bytes - done);
    ibv_sge sge{};
    sge.addr = reinterpret_cast<std::uintptr_t>(source.base) + local_offset + done;
    sge.length = static_cast<std::uint32_t>(length);
    sge.lkey = source.mr->lkey;
    ibv_send_wr wr{};
    wr.opcode = IBV_WR_RDMA_WRITE;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.wr.rdma.remote_addr = target.address + remote_offset + done;
    wr.wr.rdma.rkey = target.rkey;
    if (length <= max_inline_ && source.kind == MemoryKind::host) wr.send_flags |= IBV_SEND_INLINE;
    done += length;
    post(op, qp, wr, done == bytes ? ticket : 0, false);
  }
}

std::uint64_t VerbsFabric::post_fetch_add(const char* op, QueuePair& qp, const RemoteRegion& target,
                                          std::size_t offset, std::uint64_t add, std::uint64_t* result,
                                          std::uint64_t ticket, bool force_signal, bool fence) {
  ibv_sge sge{};
  sge.addr = reinterpret_cast<std::uintptr_t>(result);
  sge.length = sizeof(std::uint64_t);
  sge.lkey = scratch_mr_->lkey;
  ibv_send_wr wr{};
  wr.opcode = IBV_WR_ATOMIC_FETCH_AND_ADD;
  wr.sg_list = &sge;
  wr.num_sge = 1;
  wr.send_flags = fence ? IBV_SEND_FENCE : 0;
  wr.wr.atomic.remote_addr = target.address + offset;
  wr.wr.atomic.compare_add = add;
  wr.wr.atomic.rkey = target.rkey;
  return post(op, qp, wr, ticket, force_signal);
}

std::uint64_t VerbsFabric::put(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                               std::size_t remote_offset, std::size_t bytes) {
  check_usable("put");
  const RemoteRegion& target = remote_region("put", peer, remote, remote_offset, bytes);
  const Region& source = local_region("put", local, local_offset, bytes);
  std::uint64_t ticket = ledger_.issue();
  if (bytes == 0) {
    ledger_.finish(ticket);
    return ticket;
  }
  wait_for_peer_room("put", peer);
  ++peer_states_[peer].in_flight;
  post_write("put", qp_for(peer), source, local_offset, target, remote_offset, bytes, ticket);
  return ticket;
}

std::uint64_t VerbsFabric::put_signal(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                                      std::size_t remote_offset, std::size_t bytes, RegionId signal_region,
                                      std::size_t signal_offset, std::uint64_t signal_add) {
  check_usable("put_signal");
  const RemoteRegion& target = remote_region("put_signal", peer, remote, remote_offset, bytes);
  const RemoteRegion& signal = remote_region("put_signal", peer, signal_region, signal_offset, 8);
  detail::check_atomic_offset("put_signal", peer, signal_region, signal_offset);
  const Region& source = local_region("put_signal", local, local_offset, bytes);
  wait_for_peer_room("put_signal", peer);
  std::uint64_t ticket = ledger_.issue();
  ++peer_states_[peer].in_flight;
  QueuePair& qp = qp_for(peer);
  if (bytes > 0) post_write("put_signal", qp, source, local_offset, target, remote_offset, bytes, 0);
  post_fetch_add("put_signal", qp, signal, signal_offset, signal_add, &scratch_[0], ticket, false, true);
  return ticket;
}

std::uint64_t VerbsFabric::atomic_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) {
  check_usable("atomic_add");
  const RemoteRegion& target = remote_region("atomic_add", peer, region, offset, 8);
  detail::check_atomic_offset("atomic_add", peer, region, offset);
  wait_for_peer_room("atomic_add", peer);
  std::uint64_t ticket = ledger_.issue();
  ++peer_states_[peer].in_flight;
  post_fetch_add("atomic_add", qp_for(peer), target, offset, add, &scratch_[0], ticket, false, false);
  return ticket;
}

std::uint64_t VerbsFabric::fetch_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) {
  check_usable("fetch_add");
  const RemoteRegion& target = remote_region("fetch_add", peer, region, offset, 8);
  detail::check_atomic_offset("fetch_add", peer, region, offset);
  QueuePair& qp = qp_for(peer);
  std::uint64_t sequence = post_fetch_add("fetch_add", qp, target, offset, add, &scratch_[1], 0, true, false);
  Deadline deadline(peers_.timeout);
  Backoff backoff;
  while (qp.retired_sequence < sequence) {
    if (poll_completions() > 0) {
      backoff.reset();
      continue;
    }
    if (deadline.expired()) {
      break_fabric(Errc::timeout,
                   wait_timeout_text("fetch_add") + " (no reply from " + peer_label(peers_, peer) + ")");
    }
    backoff.pause();
  }
  return scratch_[1];
}

void VerbsFabric::retire(QueuePair& qp, std::uint64_t sequence) {
  while (!qp.posted.empty() && qp.posted.front().sequence <= sequence) {
    std::uint64_t ticket = qp.posted.front().ticket;
    qp.posted.pop_front();
    if (ticket != 0) {
      ledger_.finish(ticket);
      --peer_states_[qp.peer].in_flight;
    }
  }
  qp.retired_sequence = std::max(qp.retired_sequence, sequence);
}

std::size_t VerbsFabric::poll_completions() {
  ibv_wc completions[32];
  int count = ibv_poll_cq(cq_.get(), 32, completions);
  if (count < 0)
    break_fabric(Errc::system, "verbs: ibv_poll_cq failed on rank " + std::to_string(peers_.rank));
  for (int i = 0; i < count; ++i) {
    const ibv_wc& wc = completions[i];
    std::size_t slot = static_cast<std::size_t>(wc.wr_id >> kSequenceBits);
    if (slot >= qps_.size()) {
      break_fabric(Errc::internal, "verbs: completion with unknown wr_id " + std::to_string(wc.wr_id));
    }
    QueuePair& qp = *qps_[slot];
    if (wc.status != IBV_WC_SUCCESS) {
      break_fabric(
          Errc::peer_failure,
          "verbs: operation to " + peer_label(peers_, qp.peer) + " failed on rank " +
              std::to_string(peers_.rank) + " (QP " + std::to_string(qp.index) + ", qpn " +
              std::to_string(wc.qp_num) + "): " + ibv_wc_status_str(wc.status) + " (vendor error 0x" +
              [&] {
                char hex[16];
                std::snprintf(hex, sizeof(hex), "%x", wc.vendor_err);
                return std::string(hex);
              }() +
              "; the peer process died, its port went down or the region was unregistered)");
    }
    retire(qp, wc.wr_id & kSequenceMask);
  }
  return static_cast<std::size_t>(count);
}

bool VerbsFabric::progress() {
  check_usable("progress");
  return poll_completions() > 0;
}

void VerbsFabric::flush() {
  check_usable("flush");
  // Make sure every QP's last posted WR is signalled: a zero-byte signalled write retires the ones before it.
  for (auto& qp : qps_) {
    if (qp->posted.empty() || qp->since_signal == 0) continue;
    const RemoteRegion* any =
        peer_states_[qp->peer].regions.empty() ? nullptr : &peer_states_[qp->peer].regions[0];
    ibv_send_wr wr{};
    wr.opcode = IBV_WR_RDMA_WRITE;
    wr.num_sge = 0;
    if (any != nullptr) {
      wr.wr.rdma.remote_addr = any->address;
      wr.wr.rdma.rkey = any->rkey;
    }
    post("flush", *qp, wr, 0, true);
  }
  Deadline deadline(peers_.timeout);
  Backoff backoff;
  while (!ledger_.all_done() ||
         std::any_of(qps_.begin(), qps_.end(), [](const auto& qp) { return !qp->posted.empty(); })) {
    if (poll_completions() > 0) {
      backoff.reset();
      continue;
    }
    if (deadline.expired()) break_fabric(Errc::timeout, wait_timeout_text("flush"));
    backoff.pause();
  }
}

void* VerbsFabric::region_base(RegionId region) const {
  if (region >= regions_.size())
    fail(Errc::invalid_argument, "verbs fabric: no region " + std::to_string(region));
  return regions_[region].base;
}

std::size_t VerbsFabric::region_bytes(RegionId region) const {
  if (region >= regions_.size())
    fail(Errc::invalid_argument, "verbs fabric: no region " + std::to_string(region));
  return regions_[region].bytes;
}

}  // namespace ferry::transport
