#include "fabric/ucx_fabric.hpp"

#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <set>
#include <thread>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/transport/store.hpp"

namespace ferry::transport {
namespace {

using detail::peer_label;

using namespace std::chrono_literals;

// Teardown never waits longer than this for peers (or the peer's timeout, when shorter): a destructor must
// end.
constexpr Duration kTeardownBound = 10s;
// How long a fabric that isolates failed peers waits for the store to name a failed peer as dead. The store
// hears of a death within milliseconds (the dead rank's connection closes); a live peer never comes.
constexpr Duration kConfirmWait = 2s;

std::string status_text(ucs_status_t status) {
  return ucs_status_string(status);
}

void check_status(ucs_status_t status, const std::string& what) {
  if (status != UCS_OK) fail(Errc::system, "ucx: " + what + ": " + status_text(status));
}

struct ConfigDeleter {
  void operator()(ucp_config_t* config) const { ucp_config_release(config); }
};

// An object from a free list, or a new one from its pool (a deque, so UCX callbacks may point at it).
template <class T>
T* take_from(T*& free_list, std::deque<T>& pool) {
  T* item = free_list;
  if (item == nullptr) return &pool.emplace_back();
  free_list = item->next_free;
  return item;
}

ucs_memory_type_t memory_type(MemoryKind kind) {
  return kind == MemoryKind::cuda ? UCS_MEMORY_TYPE_CUDA : UCS_MEMORY_TYPE_HOST;
}

}  // namespace

UcxFabric::UcxFabric(const Peers& peers, const FabricOptions& options) : peers_(peers), options_(options) {
  if (const char* value = std::getenv("FERRY_UCX_BATCH")) {
    const std::string text(value);
    if (text == "0") {
      batching_allowed_ = false;
    } else if (text != "1") {
      fail(Errc::invalid_argument, "FERRY_UCX_BATCH=" + text +
                                       ": expected 0 (every write its own UCX operation) or 1 (writes to a "
                                       "peer over tcp travel in batches, the default)");
    }
  }
  // A batch larger than one tcp segment goes out in fragments; with several eager lanes UCX spreads them over
  // sockets while emulated puts and atomics stay on the first, so a later signal could overtake a batch.
  // UCX's new protocols (UCX_PROTO_ENABLE) choose lanes by other rules: batch only under the defaults.
  for (const char* variable : {"UCX_MAX_EAGER_RAILS", "UCX_MAX_EAGER_LANES"}) {
    const char* value = std::getenv(variable);
    if (value != nullptr && std::string(value) != "1") batching_allowed_ = false;
  }
  if (const char* value = std::getenv("UCX_PROTO_ENABLE"); value != nullptr) {
    const std::string text(value);
    if (text != "n" && text != "no" && text != "off" && text != "0") batching_allowed_ = false;
  }
  set_up_context();
  ucp_worker_params_t worker_params{};
  worker_params.field_mask = UCP_WORKER_PARAM_FIELD_THREAD_MODE;
  worker_params.thread_mode = UCS_THREAD_MODE_SINGLE;  // the owning proxy thread is the only caller
  ucp_worker_h worker = nullptr;
  check_status(ucp_worker_create(context(), &worker_params, &worker), "ucp_worker_create");
  worker_.reset(worker);

  ucp_am_handler_param_t handler{};
  handler.field_mask = UCP_AM_HANDLER_PARAM_FIELD_ID | UCP_AM_HANDLER_PARAM_FIELD_FLAGS |
                       UCP_AM_HANDLER_PARAM_FIELD_CB | UCP_AM_HANDLER_PARAM_FIELD_ARG;
  handler.id = write_batch::kActiveMessageId;
  handler.flags = UCP_AM_FLAG_WHOLE_MSG;
  handler.cb = &UcxFabric::on_batch_received;
  handler.arg = this;
  check_status(ucp_worker_set_am_recv_handler(worker, &handler), "ucp_worker_set_am_recv_handler");
}

void UcxFabric::set_up_context() {
  ucp_config_t* raw = nullptr;
  check_status(ucp_config_read(nullptr, nullptr, &raw), "ucp_config_read");
  std::unique_ptr<ucp_config_t, ConfigDeleter> config(raw);

  // Defaults ferry prefers; a UCX_* variable the user set always wins. `key` is what ucp_config_modify takes:
  // a UCP field, or a transport's field without its prefix (UCX 1.13 hands unknown keys to every transport).
  auto prefer = [&](const char* variable, const char* key, const std::string& value) {
    if (std::getenv(variable) != nullptr) return;
    ucs_status_t status = ucp_config_modify(config.get(), key, value.c_str());
    if (status != UCS_OK)
      fail(Errc::internal,
           std::string("ucx: cannot set ") + variable + "=" + value + ": " + status_text(status));
    settings_.push_back(std::string(variable) + "=" + value);
  };
  // tcp moves RMA as active-message fragments of one segment each: the 8K default costs half the bandwidth.
  prefer("UCX_TCP_TX_SEG_SIZE", "TX_SEG_SIZE", "256K");
  prefer("UCX_TCP_RX_SEG_SIZE", "RX_SEG_SIZE", "256K");
  // Shared-memory peers are only found dead by keepalive rounds (tcp notices the closed socket at once).
  prefer("UCX_KEEPALIVE_INTERVAL", "KEEPALIVE_INTERVAL", "1s");
  // Emulated nodes share one kernel, so UCX would pick shared memory between them and cross the node boundary
  // (and hang when the nodes have separate IPC namespaces): keep inter-node traffic on tcp as on a real
  // cluster.
  if (detail::nodes_share_one_kernel(peers_)) prefer("UCX_TLS", "TLS", "tcp,self");

  ucp_params_t params{};
  params.field_mask = UCP_PARAM_FIELD_FEATURES | UCP_PARAM_FIELD_ESTIMATED_NUM_EPS |
                      UCP_PARAM_FIELD_ESTIMATED_NUM_PPN | UCP_PARAM_FIELD_NAME;
  params.features = UCP_FEATURE_RMA | UCP_FEATURE_AMO64 | UCP_FEATURE_AM;
  params.estimated_num_eps = static_cast<std::size_t>(peers_.world_size);
  params.estimated_num_ppn = static_cast<std::size_t>(peers_.local_size);
  params.name = "ferry";
  ucp_context_h context = nullptr;
  check_status(ucp_init(&params, config.get(), &context), "ucp_init (RMA, 64-bit atomics, active messages)");
  context_.reset(context);
}

UcxFabric::~UcxFabric() {
  close_endpoints();
  // An endpoint that did not close in time is purged by the worker's destruction, which calls the callbacks
  // of its requests: destroy it while the Ops, Batches and PeerStates they point at still exist.
  worker_.reset();
  release_memory();
}

std::string UcxFabric::description() const {
  std::string text = std::string("ucx ") + ucp_get_version_string();
  if (connected_ && peers_.world_size > 1) {
    int peer = (peers_.rank + peers_.world_size / 2) % peers_.world_size;
    if (peer == peers_.rank) peer = (peers_.rank + 1) % peers_.world_size;
    text += ", to " + peer_label(peers_, peer) + ": " + transports_to(peer);
    if (peer_states_[peer].batching) text += " (writes batched)";
  }
  for (const auto& setting : settings_) text += ", " + setting;
  return text;
}

// The lanes UCX chose for one endpoint, read from ucp_ep_print_info ("lane[0]:  2:tcp/eth0.0 ..." lines).
std::string UcxFabric::transports_to(int peer) const {
  char* buffer = nullptr;
  std::size_t size = 0;
  FILE* stream = open_memstream(&buffer, &size);
  if (stream == nullptr) return "?";
  ucp_ep_print_info(peer_states_[peer].ep, stream);
  std::fclose(stream);
  std::string info(buffer, size);
  std::free(buffer);
  std::set<std::string> seen;
  std::string lanes;
  std::size_t at = 0;
  while ((at = info.find("lane[", at)) != std::string::npos) {
    std::size_t colon = info.find(':', at);
    std::size_t end = info.find('\n', at);
    if (colon == std::string::npos || end == std::string::npos) break;
    std::size_t tl = info.find(':', colon + 1);  // "lane[0]:  2:tcp/eth0.0 md[1] ..."
    if (tl != std::string::npos && tl < end) {
      std::size_t stop = info.find(' ', tl);
      std::string name = info.substr(tl + 1, (stop < end ? stop : end) - tl - 1);
      if (seen.insert(name).second) lanes += (lanes.empty() ? "" : "+") + name;
    }
    at = end;
  }
  return lanes.empty() ? "?" : lanes;
}

// GPU memory needs a UCX built with CUDA support (its cuda memory domain); Debian's UCX is not. Said by name
// here rather than as ucp_mem_map's generic failure, or worse, a host-memory registration of a device
// pointer.
bool UcxFabric::cuda_memory_supported() const {
  ucp_context_attr_t attr{};
  attr.field_mask = UCP_ATTR_FIELD_MEMORY_TYPES;
  const ucs_status_t status = ucp_context_query(context(), &attr);
  if (status != UCS_OK) fail(Errc::system, "ucx: ucp_context_query: " + status_text(status));
  return (attr.memory_types & UCS_BIT(UCS_MEMORY_TYPE_CUDA)) != 0;
}

void UcxFabric::require_cuda_memory_support() const {
  if (!cuda_memory_supported()) {
    fail(Errc::unsupported,
         "ucx fabric: this UCX has no CUDA support, so it cannot register GPU memory for transfers between "
         "nodes; use a UCX built with CUDA (ucx_info -d lists a cuda memory domain) or the verbs fabric "
         "(FERRY_FABRIC=verbs, with dma-buf or nvidia-peermem)");
  }
}

RegionId UcxFabric::register_region(void* base, std::size_t bytes, MemoryKind kind) {
  if (connected_) fail(Errc::invalid_argument, "ucx fabric: register_region after connect()");
  if (bytes == 0) fail(Errc::invalid_argument, "ucx fabric: register_region of 0 bytes");
  if (kind == MemoryKind::cuda) require_cuda_memory_support();
  ucp_mem_map_params_t params{};
  params.field_mask =
      UCP_MEM_MAP_PARAM_FIELD_ADDRESS | UCP_MEM_MAP_PARAM_FIELD_LENGTH | UCP_MEM_MAP_PARAM_FIELD_MEMORY_TYPE;
  params.address = base;
  params.length = bytes;
  params.memory_type = memory_type(kind);
  if (base == nullptr) {
    params.field_mask |= UCP_MEM_MAP_PARAM_FIELD_FLAGS;
    params.flags = UCP_MEM_MAP_ALLOCATE;
  }
  ucp_mem_h memh = nullptr;
  ucs_status_t status = ucp_mem_map(context(), &params, &memh);
  if (status != UCS_OK) {
    fail(Errc::system, std::string("ucx: ucp_mem_map of ") + std::to_string(bytes) + " bytes of " +
                           (kind == MemoryKind::cuda ? "cuda" : "host") + " memory" +
                           (base ? "" : " (allocated by UCX)") + ": " + status_text(status));
  }
  Region region{base, bytes, kind, memh};
  if (base == nullptr) {
    ucp_mem_attr_t attr{};
    attr.field_mask = UCP_MEM_ATTR_FIELD_ADDRESS | UCP_MEM_ATTR_FIELD_LENGTH;
    status = ucp_mem_query(memh, &attr);
    if (status != UCS_OK || attr.address == nullptr || attr.length < bytes) {
      ucp_mem_unmap(context(), memh);
      fail(Errc::system, "ucx: ucp_mem_query of a fresh allocation: " + status_text(status));
    }
    region.base = attr.address;
    if (kind == MemoryKind::host) std::memset(region.base, 0, bytes);
  }
  regions_.push_back(region);
  return static_cast<RegionId>(regions_.size() - 1);
}

void UcxFabric::connect() {
  if (connected_) fail(Errc::invalid_argument, "ucx fabric: connect() called twice");
  Store& store = *peers_.store;

  // 1. Worker addresses and process ids, then one endpoint per rank (self included: UCX loops back through
  // its
  //    self transport).
  ucp_address_t* address = nullptr;
  std::size_t address_length = 0;
  check_status(ucp_worker_get_address(worker(), &address, &address_length), "ucp_worker_get_address");
  detail::BlobWriter identity;
  identity.u32(static_cast<std::uint32_t>(getpid()));
  identity.bytes(address, address_length);
  ucp_worker_release_address(worker(), address);
  auto identities = store.all_gather("ferry/fabric/ucx/address", peers_.rank, peers_.world_size,
                                     identity.take(), peers_.timeout);

  for (int peer = 0; peer < peers_.world_size; ++peer) {
    detail::BlobReader reader(identities[peer], "ucx worker address of rank " + std::to_string(peer));
    PeerState& state = peer_states_.emplace_back();
    state.owner = this;
    state.rank = peer;
    state.pid = static_cast<int>(reader.u32());
    state.same_node = peer / peers_.local_size == peers_.node();
    Bytes remote_address = reader.bytes();
    reader.expect_end();
    ucp_ep_params_t ep_params{};
    ep_params.field_mask = UCP_EP_PARAM_FIELD_REMOTE_ADDRESS | UCP_EP_PARAM_FIELD_ERR_HANDLING_MODE |
                           UCP_EP_PARAM_FIELD_ERR_HANDLER;
    ep_params.address = reinterpret_cast<const ucp_address_t*>(remote_address.data());
    // Within the node: shared memory (NONE), watched by check_liveness(); across nodes: UCX reports failures.
    ep_params.err_mode = state.same_node ? UCP_ERR_HANDLING_MODE_NONE : UCP_ERR_HANDLING_MODE_PEER;
    ep_params.err_handler.cb = &UcxFabric::on_endpoint_error;
    ep_params.err_handler.arg = &state;
    ucs_status_t status = ucp_ep_create(worker(), &ep_params, &state.ep);
    if (status != UCS_OK) {
      state.ep = nullptr;
      fail(Errc::system, "ucx: ucp_ep_create to " + peer_label(peers_, peer) + ": " + status_text(status));
    }
  }
  next_liveness_check_ = Clock::now();

  // 2. Region descriptors: {address, bytes, packed rkey} per region.
  detail::BlobWriter writer;
  writer.u32(static_cast<std::uint32_t>(regions_.size()));
  for (const auto& region : regions_) {
    void* rkey_buffer = nullptr;
    std::size_t rkey_size = 0;
    check_status(ucp_rkey_pack(context(), region.memh, &rkey_buffer, &rkey_size), "ucp_rkey_pack");
    writer.u64(reinterpret_cast<std::uintptr_t>(region.base));
    writer.u64(region.bytes);
    writer.bytes(rkey_buffer, rkey_size);
    ucp_rkey_buffer_release(rkey_buffer);
  }
  auto descriptors = store.all_gather("ferry/fabric/ucx/regions", peers_.rank, peers_.world_size,
                                      writer.take(), peers_.timeout);
  for (int peer = 0; peer < peers_.world_size; ++peer) {
    detail::BlobReader reader(descriptors[peer], "ucx region descriptors of rank " + std::to_string(peer));
    std::uint32_t count = reader.u32();
    if (count != regions_.size()) {
      fail(Errc::invalid_argument,
           "ucx fabric: rank " + std::to_string(peer) + " registered " + std::to_string(count) +
               " regions but rank " + std::to_string(peers_.rank) + " registered " +
               std::to_string(regions_.size()) + " (every rank registers the same sequence)");
    }
    PeerState& state = peer_states_[peer];
    for (std::uint32_t i = 0; i < count; ++i) {
      RemoteRegion& remote = state.regions.emplace_back();
      remote.address = reader.u64();
      remote.bytes = reader.u64();
      Bytes packed = reader.bytes();
      check_status(ucp_ep_rkey_unpack(state.ep, packed.data(), &remote.rkey),
                   "ucp_ep_rkey_unpack of region " + std::to_string(i) + " of rank " + std::to_string(peer));
    }
    reader.expect_end();
  }
  // 3. Write batches to the peers reached over tcp alone, when every region is host memory (the target
  //    writes a batch with memcpy).
  bool host_only = true;
  for (const Region& region : regions_) {
    host_only = host_only && region.kind == MemoryKind::host;
    target_regions_.push_back(
        {static_cast<std::byte*>(region.base), region.bytes, region.kind == MemoryKind::host});
  }
  for (PeerState& state : peer_states_) {
    if (!batching_allowed_ || !host_only || state.rank == peers_.rank) continue;
    const std::string lanes = transports_to(state.rank);
    bool tcp_only = lanes != "?";
    for (std::size_t at = 0; at < lanes.size();) {
      std::size_t end = lanes.find('+', at);
      if (end == std::string::npos) end = lanes.size();
      tcp_only = tcp_only && lanes.compare(at, 3, "tcp") == 0;
      at = end + 1;
    }
    state.batching = tcp_only;
  }
  connected_ = true;
  // Nobody posts before every rank has its endpoints and keys.
  fabric_barrier(*this, peers_, "ucx/connected");
}

void UcxFabric::on_endpoint_error(void* arg, ucp_ep_h, ucs_status_t status) {
  auto* state = static_cast<PeerState*>(arg);
  if (state->failure == UCS_OK) state->failure = status;
}

void UcxFabric::on_request_done(void* request, ucs_status_t status, void* user_data) {
  auto* op = static_cast<Op*>(user_data);
  UcxFabric* self = op->owner;
  --self->pending_requests_;
  self->request_done(op, status);
  ucp_request_free(request);
}

void UcxFabric::on_batch_sent(void* request, ucs_status_t status, void* user_data) {
  auto* batch = static_cast<Batch*>(user_data);
  UcxFabric* self = batch->owner;
  --self->pending_requests_;
  self->batch_sent(batch, status);
  ucp_request_free(request);
}

ucs_status_t UcxFabric::on_batch_received(void* arg, const void*, std::size_t, void* data, std::size_t length,
                                          const ucp_am_recv_param_t* param) {
  auto* self = static_cast<UcxFabric*>(arg);
  if (!self->broken_.empty()) return UCS_OK;
  if ((param->recv_attr & UCP_AM_RECV_ATTR_FLAG_RNDV) != 0) {
    self->refuse_batch("a write batch that arrived by rendezvous (ferry sends them eager only)");
    return UCS_OK;
  }
  const std::string problem = write_batch::apply(static_cast<const std::byte*>(data), length,
                                                 self->target_regions_, self->peers_.world_size);
  if (!problem.empty()) self->refuse_batch(problem);
  return UCS_OK;
}

void UcxFabric::refuse_batch(const std::string& problem) {
  if (!broken_.empty()) return;
  broken_code_ = Errc::protocol;
  broken_ = "ucx: rank " + std::to_string(peers_.rank) + " refused " + problem;
}

void UcxFabric::request_done(Op* op, ucs_status_t status) {
  PeerState& peer = peer_states_[op->peer];
  if (status != UCS_OK && peer.failure == UCS_OK) peer.failure = status;
  if (--op->outstanding > 0) return;
  if (!op->abandoned) {
    ledger_.finish(op->ticket);
    --peer.in_flight;
  }
  op->abandoned = false;
  op->next_free = free_ops_;
  free_ops_ = op;
}

void UcxFabric::skip_request(Op* op) {
  if (--op->outstanding > 0) return;
  op->abandoned = false;
  op->next_free = free_ops_;
  free_ops_ = op;
}

void UcxFabric::check_usable(const char* op) const {
  if (!broken_.empty()) throw Error(broken_code_, broken_);
  if (!connected_) fail(Errc::invalid_argument, std::string("ucx fabric: ") + op + " before connect()");
}

std::string UcxFabric::peer_failure_text(int peer, const std::string& what) const {
  const PeerState& state = peer_states_[peer];
  return "ucx: " + what + " " + peer_label(peers_, peer) + " failed on rank " + std::to_string(peers_.rank) +
         ": " + status_text(state.failure) +
         (state.failure_reason.empty() ? " (the peer process died or its network went away)"
                                       : " (" + state.failure_reason + ")");
}

void UcxFabric::break_for_peer(int peer, const std::string& what) {
  broken_code_ = Errc::peer_failure;
  broken_ = peer_failure_text(peer, what);
  throw Error(broken_code_, broken_);
}

void UcxFabric::peer_failed(int peer, const std::string& what) {
  if (!may_isolate(peer)) break_for_peer(peer, what);
  isolate(peer, peer_failure_text(peer, what));
}

bool UcxFabric::may_isolate(int peer) const {
  if (!isolating()) return false;
  const std::uint64_t* lost = peers_.watch != nullptr ? peers_.watch->lost_words() : nullptr;
  // Nobody numbers the ranks as this fabric does: the fabric's own verdict stands.
  if (lost == nullptr || peers_.watch->world_size() != peers_.world_size) return true;
  const Deadline deadline(kConfirmWait);
  for (;;) {
    if (std::atomic_ref<const std::uint64_t>(lost[peer]).load(std::memory_order_acquire) != 0) return true;
    if (deadline.expired()) return false;
    std::this_thread::sleep_for(1ms);
  }
}

void UcxFabric::isolate(int peer, const std::string& reason) {
  PeerState& state = peer_states_[peer];
  if (state.isolated) return;
  state.isolated = true;
  failed_.push_back({peer, reason});
  // What is in flight to it is not waited for: its tickets are finished now, UCX's callbacks (a failed
  // endpoint's requests complete with an error) only return the Ops to the pool.
  for (Op& op : ops_) {
    if (op.peer != peer || op.outstanding == 0 || op.abandoned) continue;
    op.abandoned = true;
    ledger_.finish(op.ticket);
  }
  state.in_flight = 0;
  drop_batch(peer);
}

void UcxFabric::refuse_for_peer(int peer, const std::string& what) {
  if (!may_isolate(peer)) break_for_peer(peer, what);
  const std::string text = peer_failure_text(peer, what);
  isolate(peer, text);
  throw Error(Errc::peer_failure, text);
}

std::string UcxFabric::failed_reason(int peer) const {
  for (const FailedPeer& failed : failed_) {
    if (failed.rank == peer) return failed.reason;
  }
  return "not failed";
}

void UcxFabric::fail_peer(int peer, const std::string& reason) {
  if (!isolating() || peer < 0 || peer >= static_cast<int>(peer_states_.size()) || peer == peers_.rank)
    return;
  isolate(peer, reason);
}

std::uint64_t UcxFabric::dropped() {
  const std::uint64_t ticket = ledger_.issue();
  ledger_.finish(ticket);
  return ticket;
}

void UcxFabric::check_liveness() {
  // Reading the clock on every call would tax the proxy's hot loop: look at it every 256 calls.
  if (liveness_countdown_-- != 0) return;
  liveness_countdown_ = 256;
  auto now = Clock::now();
  if (now < next_liveness_check_) return;
  next_liveness_check_ = now + std::chrono::milliseconds(50);
  for (PeerState& state : peer_states_) {
    if (!state.same_node || state.rank == peers_.rank || state.failure != UCS_OK || state.pid <= 0) continue;
    if (::kill(state.pid, 0) != 0 && errno == ESRCH) {
      state.failure = UCS_ERR_CONNECTION_RESET;
      state.failure_reason = "its process (pid " + std::to_string(state.pid) + ") no longer exists";
    }
  }
}

void UcxFabric::throw_if_failed() {
  if (!broken_.empty()) throw Error(broken_code_, broken_);
  check_liveness();
  for (const PeerState& state : peer_states_) {
    if (state.failure != UCS_OK && !state.isolated) peer_failed(state.rank, "connection to");
  }
}

const UcxFabric::RemoteRegion& UcxFabric::remote_region(const char* op, int peer, RegionId region,
                                                        std::size_t offset, std::size_t bytes) const {
  detail::check_peer(peers_, peer, op);
  const PeerState& state = peer_states_[peer];
  if (region >= state.regions.size()) {
    fail(Errc::invalid_argument,
         std::string(op) + ": rank " + std::to_string(peer) + " has no region " + std::to_string(region));
  }
  const RemoteRegion& remote = state.regions[region];
  detail::check_range(op, "remote", peer, region, offset, bytes, remote.bytes);
  return remote;
}

const UcxFabric::Region& UcxFabric::local_region(const char* op, RegionId region, std::size_t offset,
                                                 std::size_t bytes) const {
  if (region >= regions_.size()) {
    fail(Errc::invalid_argument, std::string(op) + ": no local region " + std::to_string(region));
  }
  detail::check_range(op, "local", peers_.rank, region, offset, bytes, regions_[region].bytes);
  return regions_[region];
}

void UcxFabric::wait_for_room(const char* op, int peer) {
  PeerState& state = peer_states_[peer];
  if (state.isolated) return;
  if (state.failure != UCS_OK) {
    peer_failed(peer, std::string(op) + " to");
    return;
  }
  if (state.in_flight < options_.max_in_flight) return;
  send_batch(peer);  // its ops count as in flight until it is sent
  if (state.isolated) return;
  Deadline deadline(peers_.timeout);
  Backoff backoff;
  while (state.in_flight >= options_.max_in_flight && !state.isolated) {
    if (ucp_worker_progress(worker()) != 0) backoff.reset();
    throw_if_failed();
    if (state.in_flight < options_.max_in_flight) break;
    if (deadline.expired()) {
      const std::string text =
          std::string("ucx: ") + op + " on rank " + std::to_string(peers_.rank) + " waited " +
          std::to_string(std::chrono::duration_cast<std::chrono::seconds>(peers_.timeout).count()) +
          " s for room: " + std::to_string(state.in_flight) + " operations to " + peer_label(peers_, peer) +
          " never completed (is that rank still progressing its fabric?)";
      if (may_isolate(peer)) {
        isolate(peer, text);
        return;
      }
      broken_code_ = Errc::timeout;
      broken_ = text;
      throw Error(broken_code_, broken_);
    }
    backoff.pause();
  }
}

UcxFabric::Op* UcxFabric::start_op(const char* what, int peer, int requests) {
  Op* op = take_from(free_ops_, ops_);
  op->owner = this;
  op->ticket = ledger_.issue();
  op->peer = peer;
  op->outstanding = requests;
  op->operand = 0;
  op->reply = 0;
  op->what = what;
  op->next_free = nullptr;
  op->abandoned = false;
  ++peer_states_[peer].in_flight;
  return op;
}

void UcxFabric::track(Op* op, ucs_status_ptr_t result) {
  if (result == nullptr) {
    request_done(op, UCS_OK);
  } else if (UCS_PTR_IS_ERR(result)) {
    int peer = op->peer;
    const char* what = op->what;
    request_done(op, UCS_PTR_STATUS(result));
    peer_failed(peer, std::string(what) + " to");
  } else {
    ++pending_requests_;
  }
}

ucp_request_param_t UcxFabric::send_param(Op* op) const {
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
  param.cb.send = &UcxFabric::on_request_done;
  param.user_data = op;
  return param;
}

bool UcxFabric::batches(int peer, const Region& source, std::size_t bytes) const {
  return peer_states_[peer].batching && source.kind == MemoryKind::host && bytes < kDirectPutBytes;
}

UcxFabric::Batch* UcxFabric::batch_for(int peer, std::size_t bytes) {
  PeerState& state = peer_states_[peer];
  if (state.open != nullptr && (state.open->header.payload_bytes + bytes > kBatchPayloadBytes ||
                                state.open->entries.size() + 2 > kBatchEntries)) {
    send_batch(peer);
  }
  if (state.isolated) return nullptr;
  if (state.open == nullptr) {
    Batch* batch = take_from(free_batches_, batches_);
    batch->owner = this;
    batch->peer = peer;
    batch->header = write_batch::BatchHeader{};
    batch->header.sender = static_cast<std::uint32_t>(peers_.rank);
    batch->entries.clear();
    batch->iov.assign(2, ucp_dt_iov_t{});
    batch->ops.clear();
    state.open = batch;
    if (!state.listed) {
      state.listed = true;
      open_peers_.push_back(peer);
    }
  }
  return state.open;
}

std::uint64_t UcxFabric::batch_write(const char* what, int peer, void* source, RegionId remote,
                                     std::size_t remote_offset, std::size_t bytes, const BatchedAdd* add) {
  Batch* batch = batch_for(peer, bytes);
  if (batch == nullptr) return dropped();
  Op* op = start_op(what, peer, 1);
  const std::uint64_t ticket = op->ticket;  // the op may be back in the pool once the batch is sent
  batch->ops.push_back(op);
  if (bytes > 0) {
    batch->entries.push_back(
        {static_cast<std::uint32_t>(write_batch::EntryKind::put), remote, remote_offset, bytes});
    batch->iov.push_back({source, bytes});
    batch->header.payload_bytes += bytes;
  }
  if (add != nullptr) {
    batch->entries.push_back(
        {static_cast<std::uint32_t>(write_batch::EntryKind::add), add->region, add->offset, add->value});
    send_batch(peer);  // a signal is what a peer waits for: it ends the batch
  }
  return ticket;
}

void UcxFabric::send_batch(int peer) {
  PeerState& state = peer_states_[peer];
  Batch* batch = state.open;
  if (batch == nullptr) return;
  state.open = nullptr;
  batch->header.entries = static_cast<std::uint32_t>(batch->entries.size());
  batch->iov[0] = {&batch->header, sizeof batch->header};
  batch->iov[1] = {batch->entries.data(), batch->entries.size() * sizeof(write_batch::BatchEntry)};
  state.unflushed = true;
  state.probe_region = batch->entries.back().region;
  state.probe_offset = batch->entries.back().offset;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA | UCP_OP_ATTR_FIELD_DATATYPE |
                       UCP_OP_ATTR_FIELD_FLAGS;
  param.cb.send = &UcxFabric::on_batch_sent;
  param.user_data = batch;
  param.datatype = ucp_dt_make_iov();
  // Eager only: a rendezvous message's data would arrive after the messages sent behind it.
  param.flags = UCP_AM_SEND_FLAG_EAGER;
  const ucs_status_ptr_t result = ucp_am_send_nbx(state.ep, write_batch::kActiveMessageId, nullptr, 0,
                                                  batch->iov.data(), batch->iov.size(), &param);
  if (result == nullptr) {
    batch_sent(batch, UCS_OK);
  } else if (UCS_PTR_IS_ERR(result)) {
    batch_sent(batch, UCS_PTR_STATUS(result));
    peer_failed(peer, "write batch to");
  } else {
    ++pending_requests_;
  }
}

void UcxFabric::send_open_batches() {
  // Popped before it is sent: should the send throw, the peers still listed keep their batches for later.
  while (!open_peers_.empty()) {
    const int peer = open_peers_.back();
    open_peers_.pop_back();
    peer_states_[peer].listed = false;
    send_batch(peer);  // nothing when its batch went out meanwhile
  }
}

void UcxFabric::batch_sent(Batch* batch, ucs_status_t status) {
  for (Op* op : batch->ops) request_done(op, status);
  batch->ops.clear();
  batch->next_free = free_batches_;
  free_batches_ = batch;
}

void UcxFabric::drop_batch(int peer) {
  PeerState& state = peer_states_[peer];
  Batch* batch = state.open;
  if (batch == nullptr) return;
  state.open = nullptr;
  batch_sent(batch, UCS_OK);  // its ops are abandoned: this only returns them to the pool
}

void UcxFabric::probe_batches() {
  for (PeerState& state : peer_states_) {
    if (!state.unflushed || state.isolated || state.ep == nullptr) continue;
    state.unflushed = false;
    const RemoteRegion& remote = state.regions[state.probe_region];
    ucp_request_param_t param{};
    param.op_attr_mask = UCP_OP_ATTR_FIELD_CALLBACK | UCP_OP_ATTR_FIELD_USER_DATA;
    param.cb.send = [](void* request, ucs_status_t status, void* user_data) {
      auto* peer = static_cast<PeerState*>(user_data);
      if (status != UCS_OK && peer->failure == UCS_OK) peer->failure = status;
      ucp_request_free(request);
    };
    param.user_data = &state;
    const ucs_status_ptr_t result =
        ucp_get_nbx(state.ep, &state.probe_byte, 1, remote.address + state.probe_offset, remote.rkey, &param);
    if (UCS_PTR_IS_ERR(result) && state.failure == UCS_OK) state.failure = UCS_PTR_STATUS(result);
  }
}

std::uint64_t UcxFabric::put(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                             std::size_t remote_offset, std::size_t bytes) {
  check_usable("put");
  const RemoteRegion& target = remote_region("put", peer, remote, remote_offset, bytes);
  const Region& source = local_region("put", local, local_offset, bytes);
  wait_for_room("put", peer);
  if (peer_states_[peer].isolated) return dropped();
  if (bytes > 0 && batches(peer, source, bytes))
    return batch_write("put", peer, static_cast<char*>(source.base) + local_offset, remote, remote_offset,
                       bytes);
  send_batch(peer);  // what is batched goes first
  if (peer_states_[peer].isolated) return dropped();
  Op* op = start_op("put", peer, 1);
  std::uint64_t ticket = op->ticket;
  if (bytes == 0) {
    request_done(op, UCS_OK);
    return ticket;
  }
  ucp_request_param_t param = send_param(op);
  param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMORY_TYPE;
  param.memory_type = memory_type(source.kind);
  track(op, ucp_put_nbx(peer_states_[peer].ep, static_cast<char*>(source.base) + local_offset, bytes,
                        target.address + remote_offset, target.rkey, &param));
  return ticket;
}

std::uint64_t UcxFabric::put_signal(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                                    std::size_t remote_offset, std::size_t bytes, RegionId signal_region,
                                    std::size_t signal_offset, std::uint64_t signal_add) {
  check_usable("put_signal");
  const RemoteRegion& target = remote_region("put_signal", peer, remote, remote_offset, bytes);
  const RemoteRegion& signal = remote_region("put_signal", peer, signal_region, signal_offset, 8);
  detail::check_atomic_offset("put_signal", peer, signal_region, signal_offset);
  const Region& source = local_region("put_signal", local, local_offset, bytes);
  wait_for_room("put_signal", peer);
  if (peer_states_[peer].isolated) return dropped();
  if (batches(peer, source, bytes)) {
    const BatchedAdd add{signal_region, signal_offset, signal_add};
    return batch_write("put_signal", peer, static_cast<char*>(source.base) + local_offset, remote,
                       remote_offset, bytes, &add);
  }
  send_batch(peer);
  if (peer_states_[peer].isolated) return dropped();
  ucp_ep_h ep = peer_states_[peer].ep;
  Op* op = start_op("put_signal", peer, bytes > 0 ? 2 : 1);
  std::uint64_t ticket = op->ticket;
  op->operand = signal_add;
  if (bytes > 0) {
    ucp_request_param_t param = send_param(op);
    param.op_attr_mask |= UCP_OP_ATTR_FIELD_MEMORY_TYPE;
    param.memory_type = memory_type(source.kind);
    track(op, ucp_put_nbx(ep, static_cast<char*>(source.base) + local_offset, bytes,
                          target.address + remote_offset, target.rkey, &param));
    if (peer_states_[peer].isolated) {  // the put failed at once: no signal behind it
      skip_request(op);
      return ticket;
    }
    // The payload must land before the signal: order the worker's operations.
    ucs_status_t status = ucp_worker_fence(worker());
    if (status != UCS_OK) fail(Errc::system, "ucx: ucp_worker_fence: " + status_text(status));
  }
  ucp_request_param_t param = send_param(op);
  param.op_attr_mask |= UCP_OP_ATTR_FIELD_DATATYPE;
  param.datatype = ucp_dt_make_contig(8);
  track(op, ucp_atomic_op_nbx(ep, UCP_ATOMIC_OP_ADD, &op->operand, 1, signal.address + signal_offset,
                              signal.rkey, &param));
  return ticket;
}

std::uint64_t UcxFabric::atomic_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) {
  check_usable("atomic_add");
  const RemoteRegion& target = remote_region("atomic_add", peer, region, offset, 8);
  detail::check_atomic_offset("atomic_add", peer, region, offset);
  wait_for_room("atomic_add", peer);
  if (peer_states_[peer].isolated) return dropped();
  if (peer_states_[peer].batching) {
    const BatchedAdd entry{region, offset, add};
    return batch_write("atomic_add", peer, nullptr, 0, 0, 0, &entry);
  }
  send_batch(peer);
  if (peer_states_[peer].isolated) return dropped();
  Op* op = start_op("atomic_add", peer, 1);
  std::uint64_t ticket = op->ticket;
  op->operand = add;
  ucp_request_param_t param = send_param(op);
  param.op_attr_mask |= UCP_OP_ATTR_FIELD_DATATYPE;
  param.datatype = ucp_dt_make_contig(8);
  track(op, ucp_atomic_op_nbx(peer_states_[peer].ep, UCP_ATOMIC_OP_ADD, &op->operand, 1,
                              target.address + offset, target.rkey, &param));
  return ticket;
}

std::uint64_t UcxFabric::fetch_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) {
  check_usable("fetch_add");
  const RemoteRegion& target = remote_region("fetch_add", peer, region, offset, 8);
  detail::check_atomic_offset("fetch_add", peer, region, offset);
  if (peer_states_[peer].isolated) {
    fail(Errc::peer_failure, "ucx: fetch_add to " + peer_label(peers_, peer) + " on rank " +
                                 std::to_string(peers_.rank) + ": that peer failed earlier (" +
                                 failed_reason(peer) + ")");
  }
  if (peer_states_[peer].failure != UCS_OK) refuse_for_peer(peer, "fetch_add to");
  send_batch(peer);  // what is batched lands before the add
  if (peer_states_[peer].isolated) {
    fail(Errc::peer_failure, "ucx: fetch_add to " + peer_label(peers_, peer) + " on rank " +
                                 std::to_string(peers_.rank) + ": " + failed_reason(peer));
  }
  // ADD with a reply buffer is UCX's fetch-and-add. Operand and result live in an Op so that a request
  // abandoned at the deadline never writes into a dead frame.
  Op* op = start_op("fetch_add", peer, 1);
  op->operand = add;
  ucp_request_param_t param{};
  param.op_attr_mask = UCP_OP_ATTR_FIELD_DATATYPE | UCP_OP_ATTR_FIELD_REPLY_BUFFER;
  param.datatype = ucp_dt_make_contig(8);
  param.reply_buffer = &op->reply;
  ucs_status_ptr_t request = ucp_atomic_op_nbx(peer_states_[peer].ep, UCP_ATOMIC_OP_ADD, &op->operand, 1,
                                               target.address + offset, target.rkey, &param);
  ucs_status_t status = UCS_OK;
  if (UCS_PTR_IS_ERR(request)) {
    status = UCS_PTR_STATUS(request);
  } else if (request != nullptr) {
    Deadline deadline(peers_.timeout);
    Backoff backoff;
    while ((status = ucp_request_check_status(request)) == UCS_INPROGRESS) {
      if (ucp_worker_progress(worker()) != 0) {
        backoff.reset();
        continue;
      }
      check_liveness();
      if (peer_states_[peer].failure != UCS_OK || deadline.expired()) break;
      backoff.pause();
    }
    ucp_request_free(request);  // released now, or by UCX when it completes
    if (status == UCS_INPROGRESS) {
      if (peer_states_[peer].failure != UCS_OK) refuse_for_peer(peer, "fetch_add to");
      const std::string text =
          "ucx: fetch_add on rank " + std::to_string(peers_.rank) + " to " + peer_label(peers_, peer) +
          " got no reply in " +
          std::to_string(std::chrono::duration_cast<std::chrono::seconds>(peers_.timeout).count()) + " s";
      if (may_isolate(peer)) {  // a dead peer: it alone is given up (its Op stays abandoned: no callback
                                // frees it)
        isolate(peer, text);
        fail(Errc::timeout, text);
      }
      broken_code_ = Errc::timeout;
      broken_ = text;
      throw Error(broken_code_, broken_);
    }
  }
  std::uint64_t old_value = op->reply;
  request_done(op, status);
  if (status != UCS_OK) refuse_for_peer(peer, "fetch_add to");
  return old_value;
}

bool UcxFabric::progress() {
  check_usable("progress");
  send_open_batches();
  unsigned events = ucp_worker_progress(worker());
  throw_if_failed();
  return events != 0;
}

void UcxFabric::flush() {
  check_usable("flush");
  send_open_batches();
  probe_batches();
  if (isolating()) {
    flush_live_peers();
    return;
  }
  ucp_request_param_t param{};
  ucs_status_ptr_t request = ucp_worker_flush_nbx(worker(), &param);
  if (UCS_PTR_IS_ERR(request)) {
    throw_if_failed();
    fail(Errc::system, "ucx: ucp_worker_flush_nbx: " + status_text(UCS_PTR_STATUS(request)));
  }
  Deadline deadline(peers_.timeout);
  Backoff backoff;
  ucs_status_t status = UCS_OK;
  for (;;) {
    if (request != nullptr && (status = ucp_request_check_status(request)) != UCS_INPROGRESS) {
      ucp_request_free(request);
      request = nullptr;
    }
    if (request == nullptr && ledger_.all_done()) break;
    if (ucp_worker_progress(worker()) != 0) backoff.reset();
    try {
      throw_if_failed();
    } catch (...) {
      if (request != nullptr) ucp_request_free(request);
      throw;
    }
    if (deadline.expired()) {
      if (request != nullptr) ucp_request_free(request);
      std::string waiting;
      for (const PeerState& state : peer_states_) {
        if (state.in_flight > 0) waiting += (waiting.empty() ? "" : ", ") + std::to_string(state.rank);
      }
      broken_code_ = Errc::timeout;
      broken_ = "ucx: flush on rank " + std::to_string(peers_.rank) + " timed out after " +
                std::to_string(std::chrono::duration_cast<std::chrono::seconds>(peers_.timeout).count()) +
                " s with " + std::to_string(ledger_.last_issued() - ledger_.completed()) +
                " operations outstanding" +
                (waiting.empty() ? std::string(" (remote completion pending)") : " to ranks " + waiting) +
                " (is every peer progressing its fabric?)";
      throw Error(broken_code_, broken_);
    }
    backoff.pause();
  }
  if (status != UCS_OK) {
    throw_if_failed();
    fail(Errc::system,
         "ucx: flush on rank " + std::to_string(peers_.rank) + " failed: " + status_text(status));
  }
}

// flush() under isolate_peer_failures: an endpoint flush per live peer (a worker flush would also wait for
// the failed ones), and a peer whose flush does not end within the timeout is isolated as frozen.
void UcxFabric::flush_live_peers() {
  throw_if_failed();
  struct Pending {
    int peer;
    ucs_status_ptr_t request;
  };
  std::vector<Pending> pending;
  for (PeerState& state : peer_states_) {
    if (state.isolated || state.ep == nullptr) continue;
    ucp_request_param_t param{};
    ucs_status_ptr_t request = ucp_ep_flush_nbx(state.ep, &param);
    if (UCS_PTR_IS_ERR(request)) {
      if (state.failure == UCS_OK) state.failure = UCS_PTR_STATUS(request);
      peer_failed(state.rank, "flush of");
    } else if (request != nullptr) {
      pending.push_back({state.rank, request});
    }
  }
  Deadline deadline(peers_.timeout);
  Backoff backoff;
  for (;;) {
    for (std::size_t i = 0; i < pending.size();) {
      PeerState& state = peer_states_[pending[i].peer];
      const ucs_status_t status = ucp_request_check_status(pending[i].request);
      if (status == UCS_INPROGRESS && !state.isolated) {
        ++i;
        continue;
      }
      if (status != UCS_INPROGRESS && status != UCS_OK && state.failure == UCS_OK) state.failure = status;
      ucp_request_free(pending[i].request);  // released now, or by UCX once it completes
      pending[i] = pending.back();
      pending.pop_back();
    }
    throw_if_failed();
    if (pending.empty() && ledger_.all_done()) return;
    const bool moved = ucp_worker_progress(worker()) != 0;
    if (moved) backoff.reset();
    // Checked even while the worker moves: keepalive traffic alone must not keep a frozen peer alive.
    if (deadline.expired()) {
      const std::string text =
          "ucx: flush on rank " + std::to_string(peers_.rank) + " got no completion from the peer in " +
          std::to_string(std::chrono::duration_cast<std::chrono::seconds>(peers_.timeout).count()) +
          " s (it stopped progressing its fabric: frozen?)";
      std::vector<int> stalled;
      for (const Pending& waiting : pending) stalled.push_back(waiting.peer);
      for (const PeerState& state : peer_states_) {
        if (state.in_flight > 0) stalled.push_back(state.rank);
      }
      // A stalled peer the store does not know as dead is alive but frozen: that breaks the fabric, as
      // without isolation (dropping its writes silently would leave it waiting for them).
      for (const int peer : stalled) {
        if (!peer_states_[peer].isolated && !may_isolate(peer)) {
          broken_code_ = Errc::timeout;
          broken_ = text + ": " + peer_label(peers_, peer) + " is not dead as far as the job's store knows";
          throw Error(broken_code_, broken_);
        }
      }
      for (const Pending& waiting : pending) ucp_request_free(waiting.request);
      for (const int peer : stalled) isolate(peer, text);  // the pending peers are among them
      return;
    }
    if (!moved) backoff.pause();
  }
}

void* UcxFabric::region_base(RegionId region) const {
  if (region >= regions_.size())
    fail(Errc::invalid_argument, "ucx fabric: no region " + std::to_string(region));
  return regions_[region].base;
}

std::size_t UcxFabric::region_bytes(RegionId region) const {
  if (region >= regions_.size())
    fail(Errc::invalid_argument, "ucx fabric: no region " + std::to_string(region));
  return regions_[region].bytes;
}

void UcxFabric::close_endpoints() noexcept {
  if (peer_states_.empty()) return;
  // Puts still gathering in a batch go out before the quiesce, as direct puts would already have.
  if (connected_ && broken_.empty()) {
    try {
      send_open_batches();
    } catch (const std::exception&) {
      // The peer failed meanwhile: closing reports nothing more.
    }
  }
  Duration bound = std::min<Duration>(peers_.timeout, kTeardownBound);
  // Collective quiesce: a peer that tears down while we still progress would look like a failure to us, so
  // every healthy rank first waits (bounded) until all ranks stopped using the fabric.
  if (connected_ && broken_.empty() && failed_.empty()) {
    try {
      peers_.store->barrier("ferry/fabric/ucx/teardown", peers_.rank, peers_.world_size, bound);
    } catch (const std::exception&) {
      // A peer is gone or slow: close anyway, failures of the closing are expected and ignored.
    }
  }
  for (PeerState& state : peer_states_) {
    for (RemoteRegion& remote : state.regions) {
      if (remote.rkey != nullptr) ucp_rkey_destroy(remote.rkey);
      remote.rkey = nullptr;
    }
  }
  std::vector<ucs_status_ptr_t> closing;
  for (PeerState& state : peer_states_) {
    if (state.ep == nullptr) continue;
    ucp_request_param_t param{};  // UCX 1.13 crashes on a NULL param
    param.op_attr_mask = UCP_OP_ATTR_FIELD_FLAGS;
    param.flags =
        (state.failure != UCS_OK || state.isolated || !broken_.empty()) ? UCP_EP_CLOSE_FLAG_FORCE : 0;
    ucs_status_ptr_t request = ucp_ep_close_nbx(state.ep, &param);
    state.ep = nullptr;
    if (request != nullptr && !UCS_PTR_IS_ERR(request)) closing.push_back(request);
  }
  Deadline deadline(bound);
  Backoff backoff;
  while (!closing.empty()) {
    if (ucp_worker_progress(worker()) != 0) backoff.reset();
    for (std::size_t i = 0; i < closing.size();) {
      if (ucp_request_check_status(closing[i]) != UCS_INPROGRESS) {
        ucp_request_free(closing[i]);
        closing[i] = closing.back();
        closing.pop_back();
      } else {
        ++i;
      }
    }
    if (deadline.expired()) {
      std::fprintf(stderr,
                   "ferry: ucx fabric on rank %d: %zu endpoints did not close within %lld s; destroying\n",
                   peers_.rank, closing.size(),
                   static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(bound).count()));
      for (ucs_status_ptr_t request : closing) ucp_request_free(request);
      break;
    }
    backoff.pause();
  }
}

void UcxFabric::release_memory() noexcept {
  for (Region& region : regions_) {
    if (region.memh != nullptr) ucp_mem_unmap(context(), region.memh);
    region.memh = nullptr;
  }
}

}  // namespace ferry::transport
