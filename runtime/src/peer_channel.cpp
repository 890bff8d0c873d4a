// PeerChannel: credit-based slot rings over the fabric, driven by one thread per channel.
//
// Regions (the same sequence and sizes on every rank, S = slots_per_peer, T = slot stride):
//   staging  [W - 1][S][T]  this rank's outgoing messages, one ring per remote peer (a put's source must stay
//                           unchanged until the fabric completes it, so the caller's bytes are copied here)
//   receive  [W][S][T]      incoming messages, one ring per sender (self included)
//   words    [2][W] u64     arrived[s]: messages sender s has written here (bumped by its put_signal);
//                           credit[r]: messages of ours receiver r has consumed (bumped by its atomic_add)
// A slot is a 16-byte header (size, sequence number) followed by the payload. Message n from A to B lives in
// B's receive ring of A at slot n % S; A writes it only when B's credit shows that B consumed message n - S,
// and only when A's previous write from the same staging slot has completed.
#include "ferry/peer_channel.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <exception>
#include <limits>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/runtime/group_peers.hpp"
#include "ferry/transport/fabric.hpp"
#include "operation_queue.hpp"

namespace ferry {
namespace {

namespace t = transport;
using namespace std::chrono_literals;

constexpr std::size_t kHeaderBytes = 16;  // u64 payload size, u64 sequence number
constexpr std::size_t kSlotAlign = 64;    // slots on their own cache lines
// How often an idle channel still progresses the fabric: on tcp and shared memory a peer's writes into our
// slots and its credit returns only land while we progress, so an idle rank cannot stop entirely. The pause
// doubles from the first to the last value while nothing happens (an idle channel then costs a fraction of a
// percent of a core) and is back at the first as soon as anything moves; a new operation wakes the thread at
// once, so only traffic this rank did not ask for yet waits for the poll.
constexpr std::chrono::microseconds kIdlePollMin{1000};
constexpr std::chrono::microseconds kIdlePollMax{8000};
// While something is pending but nothing moves: spin, yield, then sleep with a doubling pause up to this cap
// (ferry's Backoff policy), waking at once when the caller issues a new operation.
constexpr std::uint32_t kSpinRounds = 64;
constexpr std::uint32_t kYieldRounds = 64;
constexpr std::chrono::microseconds kMinSleep{2};
constexpr std::chrono::microseconds kMaxSleep{1000};

std::size_t slot_stride(std::size_t max_message_bytes) {
  return (kHeaderBytes + max_message_bytes + kSlotAlign - 1) / kSlotAlign * kSlotAlign;
}

std::uint64_t load_acquire(const std::uint64_t* word) {
  return std::atomic_ref<std::uint64_t>(*const_cast<std::uint64_t*>(word)).load(std::memory_order_acquire);
}

void store_release(std::uint64_t* word, std::uint64_t value) {
  std::atomic_ref<std::uint64_t>(*word).store(value, std::memory_order_release);
}

std::string seconds_text(Duration duration) {
  char text[32];
  std::snprintf(text, sizeof text, "%g s", std::chrono::duration<double>(duration).count());
  return text;
}

// The message of a ferry::Error without its "ferry: <category>: " prefix, which the re-thrown Error adds
// again.
std::string bare_message(const Error& error) {
  std::string what = error.what();
  std::string prefix = "ferry: " + std::string(to_string(error.code())) + ": ";
  return what.rfind(prefix, 0) == 0 ? what.substr(prefix.size()) : what;
}

std::exception_ptr error_ptr(Errc code, const std::string& message) {
  return std::make_exception_ptr(Error(code, message));
}

}  // namespace

void PeerChannelConfig::validate(int world_size) const {
  if (world_size < 1) fail(Errc::invalid_argument, "PeerChannel: world size " + std::to_string(world_size));
  if (slots_per_peer < 1) {
    fail(Errc::invalid_argument,
         "PeerChannelConfig::slots_per_peer is " + std::to_string(slots_per_peer) + "; need at least 1");
  }
  if (timeout <= Duration::zero()) fail(Errc::invalid_argument, "PeerChannelConfig::timeout is not positive");
  // Keeps the slot arithmetic below far from overflow; no real message comes near it.
  constexpr std::size_t kMaxMessage = std::size_t{1} << 40;
  if (max_message_bytes > kMaxMessage) {
    fail(Errc::invalid_argument, "PeerChannelConfig::max_message_bytes is " +
                                     std::to_string(max_message_bytes) + "; at most " +
                                     std::to_string(kMaxMessage));
  }
  std::size_t rings = std::size_t(world_size) * std::size_t(slots_per_peer);
  if (slot_stride(max_message_bytes) > std::numeric_limits<std::size_t>::max() / 2 / rings) {
    fail(Errc::invalid_argument, "PeerChannelConfig: " + std::to_string(slots_per_peer) + " slots of " +
                                     std::to_string(max_message_bytes) + " bytes for " +
                                     std::to_string(world_size) + " ranks do not fit in memory");
  }
}

struct PeerChannel::Impl {
  // An operation as the caller issued it (sequence = its number among this rank's sends to, or recvs from,
  // that peer: what error messages call "send #n").
  struct Op {
    const std::byte* send_data = nullptr;
    std::byte* recv_data = nullptr;
    std::size_t bytes = 0;
    std::uint64_t sequence = 0;
    std::shared_ptr<Event::State> state;
  };
  struct Issued {
    int peer = 0;
    bool is_send = false;
    Op op;
  };
  // A send whose write is posted; its Event completes when the fabric completes the write.
  struct Posted {
    std::uint64_t ticket = 0;
    Op op;
    Clock::time_point deadline;
  };
  // Per peer, owned by the channel thread.
  struct Peer {
    std::deque<Op> sends;  // waiting for a slot; the front one is running
    bool send_running = false;
    Clock::time_point send_deadline;
    std::deque<Posted> posted;  // in ticket order
    std::deque<Op> recvs;       // waiting for a message; the front one is running
    bool recv_running = false;
    Clock::time_point recv_deadline;
    std::uint64_t sent = 0;                  // messages written to this peer
    std::uint64_t received = 0;              // messages consumed from this peer
    std::vector<std::uint64_t> slot_ticket;  // staging slot -> ticket of its last write
    bool busy() const { return !sends.empty() || !posted.empty() || !recvs.empty(); }
  };

  Impl(Group& group, const PeerChannelConfig& channel_config);
  ~Impl();

  void start_thread();
  void stop_thread() noexcept;
  void teardown() noexcept;
  Event issue(int peer, bool is_send, Op op);

  // Channel thread.
  void run() noexcept;
  void take_issued();
  bool woken() const { return !issued.empty() || (stopping && !stop_seen); }
  bool step(Clock::time_point now);
  bool advance_sends(int peer, Clock::time_point now);
  bool advance_recvs(int peer, Clock::time_point now);
  bool retire(int peer, std::uint64_t completed);
  void check_deadlines(int peer, Clock::time_point now);
  bool pending() const;
  void break_channel(Errc code, const std::string& message);
  void fail_all(Errc code, const std::string& why);
  void finish(Op& op, Errc code, const std::string& message);
  void pause(std::uint32_t& rounds, std::chrono::microseconds& sleep);

  std::string label() const { return "PeerChannel rank " + std::to_string(rank); }
  static std::string peer_text(int peer) { return "rank " + std::to_string(peer); }
  std::string send_text(int peer, const Op& op) const {
    return label() + ": send #" + std::to_string(op.sequence) + " to " + peer_text(peer) + " (" +
           std::to_string(op.bytes) + " bytes)";
  }
  std::string recv_text(int peer, const Op& op) const {
    return label() + ": recv #" + std::to_string(op.sequence) + " from " + peer_text(peer) + " (" +
           std::to_string(op.bytes) + "-byte buffer)";
  }

  std::size_t receive_offset(int sender, std::size_t slot) const {
    return (std::size_t(sender) * slots + slot) * stride;
  }
  std::size_t staging_offset(int peer, std::size_t slot) const {
    std::size_t index = peer < rank ? std::size_t(peer) : std::size_t(peer) - 1;
    return (index * slots + slot) * stride;
  }
  std::uint64_t* arrived_word(int sender) const { return words + sender; }
  std::uint64_t* credit_word(int receiver) const { return words + world + receiver; }
  std::size_t arrived_offset(int sender) const { return std::size_t(sender) * 8; }
  std::size_t credit_offset(int receiver) const { return (std::size_t(world) + receiver) * 8; }

  Group& group;
  PeerChannelConfig config;
  int rank = 0;
  int world = 1;
  std::size_t slots = 0;
  std::size_t stride = 0;
  t::Peers peers;
  std::unique_ptr<t::Fabric> fabric;
  t::RegionId staging_region = 0, receive_region = 0, words_region = 0;
  std::byte* staging = nullptr;
  std::byte* receive = nullptr;
  std::uint64_t* words = nullptr;

  // Shared between callers and the channel thread.
  std::mutex mutex;
  std::condition_variable wake;
  std::vector<Issued> issued;
  std::atomic<bool> has_issued{false};
  bool stopping = false;               // guarded by `mutex` (the thread's sleeps wait on it)
  std::atomic<bool> stop_flag{false};  // the same, read by the thread's loop without the lock
  bool broken = false;                 // once set, operations fail at issue
  Errc broken_code = Errc::internal;
  std::string broken_message;
  std::vector<std::uint64_t> sends_issued, recvs_issued;  // per peer, for sequence numbers
  std::atomic<std::uint64_t> messages_sent{0}, bytes_sent{0}, messages_received{0}, bytes_received{0};

  // Channel thread only.
  std::vector<Peer> peer_state;
  std::uint64_t last_ticket = 0;  // highest fabric ticket handed out (writes and credit returns)
  bool fabric_broken = false;
  bool stop_seen = false;
  std::thread thread;
};

PeerChannel::Impl::Impl(Group& group_ref, const PeerChannelConfig& channel_config)
    : group(group_ref), config(channel_config), rank(group_ref.rank()), world(group_ref.world_size()) {
  config.validate(world);
  slots = std::size_t(config.slots_per_peer);
  stride = slot_stride(config.max_message_bytes);
  peers = runtime::group_peers(group, config.timeout);
  t::FabricOptions options;
  options.kind = t::fabric_kind_from_env();
  if (options.kind == t::FabricKind::noop) {
    fail(Errc::unsupported, "PeerChannel: FERRY_FABRIC=noop moves no bytes; use ucx or verbs");
  }
  // Per peer at most S writes and about S credit returns are in flight; keep the fabric from ever blocking
  // the channel thread inside a put for room.
  options.max_in_flight = std::max<std::size_t>(options.max_in_flight, 2 * slots + 16);
  fabric = t::make_fabric(peers, options);
  std::size_t remote_rings = std::size_t(std::max(world - 1, 1));
  staging_region = fabric->register_region(nullptr, remote_rings * slots * stride, t::MemoryKind::host);
  receive_region = fabric->register_region(nullptr, std::size_t(world) * slots * stride, t::MemoryKind::host);
  words_region = fabric->register_region(nullptr, 2 * std::size_t(world) * 8, t::MemoryKind::host);
  fabric->connect();
  staging = static_cast<std::byte*>(fabric->region_base(staging_region));
  receive = static_cast<std::byte*>(fabric->region_base(receive_region));
  words = static_cast<std::uint64_t*>(fabric->region_base(words_region));
  sends_issued.assign(std::size_t(world), 0);
  recvs_issued.assign(std::size_t(world), 0);
  peer_state.resize(std::size_t(world));
  for (Peer& peer : peer_state) peer.slot_ticket.assign(slots, 0);
}

PeerChannel::Impl::~Impl() {
  stop_thread();
  teardown();
}

void PeerChannel::Impl::start_thread() {
  try {
    thread = std::thread([this] { run(); });
  } catch (const std::system_error& e) {
    fail(Errc::system, "PeerChannel: cannot start the channel thread: " + std::string(e.what()));
  }
}

void PeerChannel::Impl::stop_thread() noexcept {
  {
    std::lock_guard lock(mutex);
    stopping = true;
    stop_flag.store(true, std::memory_order_release);
  }
  wake.notify_all();
  if (thread.joinable()) thread.join();
}

// After the thread drained (or gave up on) every operation. Flush makes our last writes and credit returns
// visible; the fabric barrier keeps us progressing until every rank got there, so peers still finishing
// (tcp, shared memory: their writes into us need our progress) are not cut off.
void PeerChannel::Impl::teardown() noexcept {
  const bool job_failed = peers.watch != nullptr && !peers.watch->failure().empty();
  if (fabric && !fabric_broken && !job_failed) {
    try {
      fabric->flush();
      t::fabric_barrier(*fabric, peers, "ferry/peer_channel/close");
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ferry: %s: teardown: %s\n", label().c_str(), e.what());
    }
  }
  fabric.reset();
}

Event PeerChannel::Impl::issue(int peer, bool is_send, Op op) {
  op.state = std::make_shared<Event::State>();
  Event event(op.state);
  {
    std::lock_guard lock(mutex);
    std::uint64_t& counter = (is_send ? sends_issued : recvs_issued)[std::size_t(peer)];
    op.sequence = counter++;
    if (broken) {
      std::string what = is_send ? send_text(peer, op) : recv_text(peer, op);
      op.state->finish(error_ptr(broken_code, what + ": the channel is broken: " + broken_message));
      return event;
    }
    issued.push_back({peer, is_send, std::move(op)});
    has_issued.store(true, std::memory_order_release);
  }
  wake.notify_one();
  return event;
}

void PeerChannel::Impl::take_issued() {
  std::vector<Issued> taken;
  {
    std::lock_guard lock(mutex);
    taken.swap(issued);
    has_issued.store(false, std::memory_order_relaxed);
  }
  for (Issued& item : taken) {
    Peer& peer = peer_state[std::size_t(item.peer)];
    (item.is_send ? peer.sends : peer.recvs).push_back(std::move(item.op));
  }
}

bool PeerChannel::Impl::pending() const {
  for (const Peer& peer : peer_state) {
    if (peer.busy()) return true;
  }
  return !fabric_broken && fabric->completed() < last_ticket;
}

void PeerChannel::Impl::run() noexcept {
  std::uint32_t rounds = 0;
  std::chrono::microseconds sleep = kMinSleep;
  std::chrono::microseconds idle_poll = kIdlePollMin;
  bool draining = false;
  Clock::time_point drain_deadline;
  while (true) {
    // Stop first, then the queue: whatever was issued before the stop is taken in this round.
    bool stop = stop_flag.load(std::memory_order_acquire);
    if (has_issued.load(std::memory_order_acquire)) take_issued();
    Clock::time_point now = Clock::now();
    if (stop && !draining) {
      draining = true;
      stop_seen = true;
      drain_deadline = now + config.timeout;
    }
    bool moved = false;
    if (!fabric_broken) {
      try {
        moved = step(now);
      } catch (const Error& e) {
        // A peer the fabric lost may be a survivor that left once the job had failed elsewhere: name what
        // the store names (it knows within moments), as every rank does.
        const std::string cause = e.code() == Errc::peer_failure && peers.watch != nullptr
                                      ? peers.watch->await_failure(std::chrono::milliseconds(500))
                                      : std::string();
        break_channel(e.code(), cause.empty() ? bare_message(e) : cause);
      } catch (const std::exception& e) {
        break_channel(Errc::internal, std::string("channel thread failed: ") + e.what());
      }
    }
    bool busy = pending();
    if (draining) {
      if (!busy) return;
      if (now >= drain_deadline) {
        fail_all(Errc::timeout, "the channel was destroyed and this operation did not finish within " +
                                    seconds_text(config.timeout));
        return;
      }
    }
    if (moved) {
      rounds = 0;
      sleep = kMinSleep;
      idle_poll = kIdlePollMin;
      continue;
    }
    if (busy) {
      pause(rounds, sleep);
    } else {
      rounds = 0;
      sleep = kMinSleep;
      std::unique_lock lock(mutex);
      if (!wake.wait_for(lock, idle_poll, [this] { return woken(); })) {
        idle_poll = std::min(idle_poll * 2, kIdlePollMax);
      }
    }
  }
}

void PeerChannel::Impl::pause(std::uint32_t& rounds, std::chrono::microseconds& sleep) {
  if (rounds < kSpinRounds) {
    ++rounds;
    return;
  }
  if (rounds < kSpinRounds + kYieldRounds) {
    ++rounds;
    std::this_thread::yield();
    return;
  }
  {
    std::unique_lock lock(mutex);
    wake.wait_for(lock, sleep, [this] { return woken(); });
  }
  if (sleep < kMaxSleep) sleep = std::min(sleep * 2, kMaxSleep);
}

bool PeerChannel::Impl::step(Clock::time_point now) {
  // A failure anywhere in the job (told by the store) ends what waits here: the peer it waits for may be
  // the one that failed, or stuck behind it.
  if (peers.watch != nullptr && pending()) peers.watch->check();
  bool moved = fabric->progress();
  std::uint64_t completed = fabric->completed();
  for (int peer = 0; peer < world; ++peer) {
    if (!peer_state[std::size_t(peer)].busy()) continue;
    moved |= retire(peer, completed);
    moved |= advance_recvs(peer, now);
    moved |= advance_sends(peer, now);
    check_deadlines(peer, now);
  }
  return moved;
}

bool PeerChannel::Impl::advance_sends(int peer_rank, Clock::time_point now) {
  Peer& peer = peer_state[std::size_t(peer_rank)];
  bool moved = false;
  while (!peer.sends.empty()) {
    Op& op = peer.sends.front();
    if (!peer.send_running) {
      op.state->start();
      peer.send_running = true;
      peer.send_deadline = now + config.timeout;
    }
    std::uint64_t n = peer.sent;
    std::size_t slot = std::size_t(n % slots);
    if (n - load_acquire(credit_word(peer_rank)) >= slots) break;  // the receiver has not freed slot n - S
    const std::uint64_t header[2] = {op.bytes, n};
    if (peer_rank == rank) {
      // To self: straight into our own receive ring, published like a remote write.
      std::byte* at = receive + receive_offset(rank, slot);
      std::memcpy(at, header, kHeaderBytes);
      if (op.bytes > 0) std::memcpy(at + kHeaderBytes, op.send_data, op.bytes);
      store_release(arrived_word(rank), n + 1);
      messages_sent.fetch_add(1, std::memory_order_relaxed);
      bytes_sent.fetch_add(op.bytes, std::memory_order_relaxed);
      op.state->finish(nullptr);
    } else {
      if (fabric->completed() < peer.slot_ticket[slot])
        break;  // the previous write from this slot is in flight
      std::size_t source = staging_offset(peer_rank, slot);
      std::memcpy(staging + source, header, kHeaderBytes);
      if (op.bytes > 0) std::memcpy(staging + source + kHeaderBytes, op.send_data, op.bytes);
      std::uint64_t ticket =
          fabric->put_signal(peer_rank, staging_region, source, receive_region, receive_offset(rank, slot),
                             kHeaderBytes + op.bytes, words_region, arrived_offset(rank), 1);
      last_ticket = std::max(last_ticket, ticket);
      peer.slot_ticket[slot] = ticket;
      peer.posted.push_back({ticket, std::move(op), now + config.timeout});
    }
    ++peer.sent;
    peer.sends.pop_front();
    peer.send_running = false;
    moved = true;
  }
  return moved;
}

bool PeerChannel::Impl::retire(int peer_rank, std::uint64_t completed) {
  Peer& peer = peer_state[std::size_t(peer_rank)];
  bool moved = false;
  while (!peer.posted.empty() && peer.posted.front().ticket <= completed) {
    Op& op = peer.posted.front().op;
    messages_sent.fetch_add(1, std::memory_order_relaxed);
    bytes_sent.fetch_add(op.bytes, std::memory_order_relaxed);
    op.state->finish(nullptr);
    peer.posted.pop_front();
    moved = true;
  }
  return moved;
}

bool PeerChannel::Impl::advance_recvs(int peer_rank, Clock::time_point now) {
  Peer& peer = peer_state[std::size_t(peer_rank)];
  bool moved = false;
  while (!peer.recvs.empty()) {
    Op& op = peer.recvs.front();
    if (!peer.recv_running) {
      op.state->start();
      peer.recv_running = true;
      peer.recv_deadline = now + config.timeout;
    }
    std::uint64_t n = peer.received;
    std::uint64_t arrived = load_acquire(arrived_word(peer_rank));
    if (arrived <= n) break;
    if (arrived - n > slots) {
      fail(Errc::protocol, label() + ": " + peer_text(peer_rank) + " wrote " + std::to_string(arrived - n) +
                               " unconsumed messages into " + std::to_string(slots) + " slots");
    }
    const std::byte* at = receive + receive_offset(peer_rank, std::size_t(n % slots));
    std::uint64_t header[2];
    std::memcpy(header, at, kHeaderBytes);
    if (header[1] != n || header[0] > config.max_message_bytes) {
      fail(Errc::protocol, label() + ": message #" + std::to_string(n) + " from " + peer_text(peer_rank) +
                               " has a corrupt header (sequence " + std::to_string(header[1]) + ", " +
                               std::to_string(header[0]) + " bytes)");
    }
    if (header[0] != op.bytes) {
      finish(op, Errc::invalid_argument,
             recv_text(peer_rank, op) + ": the message is " + std::to_string(header[0]) +
                 " bytes but the receive buffer is " + std::to_string(op.bytes) +
                 " bytes (sizes must match; the message was dropped)");
    } else {
      if (op.bytes > 0) std::memcpy(op.recv_data, at + kHeaderBytes, op.bytes);
      messages_received.fetch_add(1, std::memory_order_relaxed);
      bytes_received.fetch_add(op.bytes, std::memory_order_relaxed);
      op.state->finish(nullptr);
    }
    // The slot is free again: hand its credit back to the sender.
    ++peer.received;
    if (peer_rank == rank) {
      store_release(credit_word(rank), peer.received);
    } else {
      last_ticket =
          std::max(last_ticket, fabric->atomic_add(peer_rank, words_region, credit_offset(rank), 1));
    }
    peer.recvs.pop_front();
    peer.recv_running = false;
    moved = true;
  }
  return moved;
}

void PeerChannel::Impl::check_deadlines(int peer_rank, Clock::time_point now) {
  Peer& peer = peer_state[std::size_t(peer_rank)];
  const std::string waited = seconds_text(config.timeout);
  if (peer.send_running && now >= peer.send_deadline) {
    Op& op = peer.sends.front();
    std::uint64_t n = peer.sent;
    std::uint64_t credit = load_acquire(credit_word(peer_rank));
    std::string why;
    if (n - credit >= slots) {
      why = "waited " + waited + " for a free slot at " + peer_text(peer_rank) + ": it has received " +
            std::to_string(credit) + " of the " + std::to_string(n) + " messages written to it and all " +
            std::to_string(slots) + " slots are full (is it alive and calling recv?)";
    } else {
      why = "waited " + waited + " for the fabric to complete the earlier write to " + peer_text(peer_rank) +
            " from the same slot";
    }
    finish(op, Errc::timeout, send_text(peer_rank, op) + ": " + why);
    peer.sends.pop_front();
    peer.send_running = false;
  }
  if (!peer.posted.empty() && now >= peer.posted.front().deadline) {
    Op& op = peer.posted.front().op;
    finish(op, Errc::timeout,
           send_text(peer_rank, op) + ": the fabric did not complete the write to " + peer_text(peer_rank) +
               " within " + waited + " (is it alive and progressing?)");
    peer.posted.pop_front();
  }
  if (peer.recv_running && now >= peer.recv_deadline) {
    Op& op = peer.recvs.front();
    finish(op, Errc::timeout,
           recv_text(peer_rank, op) + ": no message arrived from " + peer_text(peer_rank) + " within " +
               waited + " (received " + std::to_string(peer.received) +
               " from it so far; is it alive and sending?)");
    peer.recvs.pop_front();
    peer.recv_running = false;
  }
}

void PeerChannel::Impl::finish(Op& op, Errc code, const std::string& message) {
  op.state->finish(error_ptr(code, message));
}

void PeerChannel::Impl::break_channel(Errc code, const std::string& message) {
  fabric_broken = true;
  {
    std::lock_guard lock(mutex);
    broken = true;
    broken_code = code;
    broken_message = message;
  }
  take_issued();  // what was issued before `broken` was set fails here, the rest at issue
  fail_all(code, message);
}

void PeerChannel::Impl::fail_all(Errc code, const std::string& why) {
  for (int peer_rank = 0; peer_rank < world; ++peer_rank) {
    Peer& peer = peer_state[std::size_t(peer_rank)];
    for (Op& op : peer.sends) finish(op, code, send_text(peer_rank, op) + ": " + why);
    for (Posted& posted : peer.posted) finish(posted.op, code, send_text(peer_rank, posted.op) + ": " + why);
    for (Op& op : peer.recvs) finish(op, code, recv_text(peer_rank, op) + ": " + why);
    peer.sends.clear();
    peer.posted.clear();
    peer.recvs.clear();
    peer.send_running = peer.recv_running = false;
  }
}

PeerChannel::PeerChannel(Group& group, const PeerChannelConfig& config)
    : impl_(std::make_unique<Impl>(group, config)) {
  impl_->start_thread();
}

PeerChannel::~PeerChannel() = default;

int PeerChannel::rank() const {
  return impl_->rank;
}

int PeerChannel::world_size() const {
  return impl_->world;
}

const PeerChannelConfig& PeerChannel::config() const {
  return impl_->config;
}

namespace {

void check_call(const char* call, int peer, int world, std::size_t bytes, std::size_t max_bytes) {
  if (peer < 0 || peer >= world) {
    fail(Errc::invalid_argument, std::string("PeerChannel::") + call + ": peer " + std::to_string(peer) +
                                     " is out of range (world size " + std::to_string(world) + ")");
  }
  if (bytes > max_bytes) {
    fail(Errc::invalid_argument, std::string("PeerChannel::") + call + " with rank " + std::to_string(peer) +
                                     ": " + std::to_string(bytes) +
                                     " bytes exceed PeerChannelConfig::max_message_bytes (" +
                                     std::to_string(max_bytes) + ")");
  }
}

}  // namespace

Event PeerChannel::send(int peer, std::span<const std::byte> bytes) {
  check_call("send", peer, impl_->world, bytes.size(), impl_->config.max_message_bytes);
  Impl::Op op;
  op.send_data = bytes.data();
  op.bytes = bytes.size();
  return impl_->issue(peer, true, std::move(op));
}

Event PeerChannel::recv(int peer, std::span<std::byte> bytes) {
  check_call("recv", peer, impl_->world, bytes.size(), impl_->config.max_message_bytes);
  Impl::Op op;
  op.recv_data = bytes.data();
  op.bytes = bytes.size();
  return impl_->issue(peer, false, std::move(op));
}

PeerChannel::Stats PeerChannel::stats() const {
  Stats stats;
  stats.messages_sent = impl_->messages_sent.load(std::memory_order_relaxed);
  stats.bytes_sent = impl_->bytes_sent.load(std::memory_order_relaxed);
  stats.messages_received = impl_->messages_received.load(std::memory_order_relaxed);
  stats.bytes_received = impl_->bytes_received.load(std::memory_order_relaxed);
  return stats;
}

}  // namespace ferry
