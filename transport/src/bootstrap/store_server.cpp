// The store server: one thread, one poll loop, every socket non-blocking.
//
// Each connection has its own read buffer and write buffer, so a client that sends half a frame, sends
// garbage or stops reading its replies only ever stalls itself. Requests on one connection are answered
// strictly in order: while a GET is parked waiting for its key, or a reply has not been fully written, the
// connection's next frame is not processed (and its socket is not read, which pushes back on a client that
// pipelines).
//
// What a request means is decided in store_table.cpp (no sockets there); this file moves bytes, parks GETs
// and WATCHes, answers every waiter once the job has failed, notices members whose connection closed, and
// bounds what strangers cost: at most max_pending_handshakes connections authenticate at once (a new one
// drops the oldest), each within handshake_timeout, and their drops are logged in summary (drop_log.hpp).
// Nothing here refuses a connection for where it comes from: a client that proves the secret is served
// whatever strangers on its address did.
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "bootstrap/drop_log.hpp"
#include "bootstrap/socket.hpp"
#include "bootstrap/store_auth.hpp"
#include "bootstrap/store_protocol.hpp"
#include "bootstrap/store_table.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/store.hpp"

namespace ferry::transport {
namespace {

using namespace std::chrono_literals;
using wire::Opcode;

// Beyond this many open client connections new ones are refused with a named reason. A job opens one per
// rank (plus a few per-thread ones), so 4096 is far above need and far below typical fd limits.
constexpr std::size_t kMaxConnections = 4096;
// Drops of unauthenticated connections logged one by one per interval; the rest are summarised.
constexpr std::size_t kDropLinesPerInterval = 5;
constexpr Duration kDropLogInterval = 10s;
// Per wakeup, read at most this much from one connection, so one fast writer cannot starve the others.
constexpr std::size_t kReadBudgetPerWakeup = std::size_t{4} << 20;
constexpr std::size_t kReadChunkBytes = std::size_t{256} << 10;
// Buffers that grew past this for one large frame are released once drained.
constexpr std::size_t kKeepBufferCapacity = std::size_t{1} << 20;
// After running out of file descriptors, stop accepting for this long instead of spinning on the listener.
constexpr Duration kAcceptPauseOnExhaustion = 100ms;

void log_to_stderr(const std::string& text) {
  // One fprintf per line so lines from concurrent servers and ranks do not interleave mid-line.
  std::fprintf(stderr, "ferry store: %s\n", text.c_str());
}

void release_if_large(Bytes& buffer) {
  if (buffer.capacity() > kKeepBufferCapacity) Bytes().swap(buffer);
}

}  // namespace

struct StoreServer::Impl {
  // One client connection. A member of Impl (not of an anonymous namespace): Impl's fields hold it, and a
  // type of an anonymous namespace inside a class with linkage trips -Wsubobject-linkage in unity builds.
  struct Connection {
    std::uint64_t id = 0;
    net::Fd fd;
    std::string peer;  // "ip:port", for messages
    ConnectionState state;
    Clock::time_point handshake_deadline{};
    bool dead = false;

    Bytes in;  // received bytes; in[in_start..] not yet processed
    std::size_t in_start = 0;
    Bytes out;  // replies; out[out_start..] not yet written
    std::size_t out_start = 0;

    bool parked = false;  // a GET waits for parked_key, or (watching) a WATCH for the job's failure
    bool watching = false;
    std::string parked_key;
    Clock::time_point parked_deadline{};
    Duration parked_budget{};

    bool authenticated() const { return state.authenticated(); }
    bool out_pending() const { return out_start < out.size(); }
    bool busy() const { return parked || out_pending(); }
  };

  explicit Impl(const StoreOptions& options);
  ~Impl();

  void run_guarded();
  void run();

  // Event handlers (server thread only).
  void accept_pending();
  void read_from(Connection& connection);
  void pump(Connection& connection);
  void handle_frame(Connection& connection, const wire::FrameHeader& header, std::string_view key,
                    const std::uint8_t* value);
  // Makes room for one more connection that is authenticating: drops the oldest beyond the limit.
  void evict_oldest_handshake();
  // Answers every parked GET (ERROR "failed"; a lost rank's key waits on) and WATCH (the failure) now that
  // the job has failed.
  void announce_failure();
  // A member's connection is going away: without a LEAVE first, that fails the job, and the rank is published
  // as lost (wire::lost_rank_key).
  void note_departure(Connection& connection, const std::string& how);
  void publish_counters();
  StoreStats snapshot() const;  // any thread
  void wake_waiters(const std::string& key);
  void expire_deadlines(Clock::time_point now);
  void drain_pump_queue();
  int poll_timeout_ms(Clock::time_point now) const;

  void reply(Connection& connection, Opcode opcode, std::string_view key, const std::uint8_t* value,
             std::size_t value_len);
  void reply_text(Connection& connection, Opcode opcode, std::string_view key, std::string_view text) {
    reply(connection, opcode, key, reinterpret_cast<const std::uint8_t*>(text.data()), text.size());
  }
  void flush(Connection& connection);
  // Logs the reason (in summary for unauthenticated peers), tells the peer (best effort) and closes the
  // connection. `summary_reason`: the short text drops of unauthenticated peers are counted under.
  void drop(Connection& connection, std::string_view kind, const std::string& reason,
            const std::string& summary_reason = "refused before authenticating");
  // Closes without a word: the peer left on its own.
  void close_quietly(Connection& connection);
  void unpark(Connection& connection);
  Connection* find(std::uint64_t id);

  void log(const std::string& line) const { options.log ? options.log(line) : log_to_stderr(line); }

  StoreOptions options;
  net::Fd listener;
  net::Fd wakeup;  // eventfd: the destructor writes it to stop the loop
  std::uint16_t port = 0;

  // Read by stats() from any thread.
  std::atomic<std::uint64_t> connection_count{0};
  std::atomic<std::uint64_t> failed_hellos{0};
  std::atomic<std::uint64_t> refused_connections{0};

  // Everything below belongs to the server thread (the table's counts may be read from any).
  StoreTable table;
  Membership members;
  DropLog drop_log;
  std::unordered_map<std::uint64_t, std::unique_ptr<Connection>> connections;
  std::set<std::uint64_t> handshaking;  // ids of connections still authenticating, oldest first
  std::unordered_map<std::string, std::vector<std::uint64_t>> waiters;  // key -> parked connection ids
  std::vector<std::uint64_t> pump_queue;  // connections that became idle and may hold unprocessed frames
  std::uint64_t next_id = 1;
  Clock::time_point accept_paused_until{};
  std::vector<std::uint8_t> read_scratch;

  std::thread thread;  // last: started once everything above exists
};

StoreServer::Impl::Impl(const StoreOptions& options_in)
    : options(options_in),
      drop_log([this](const std::string& line) { log(line); }, kDropLinesPerInterval, kDropLogInterval) {
  if (options.max_message_bytes == 0)
    fail(Errc::invalid_argument, "StoreOptions::max_message_bytes must be > 0");
  if (options.max_pending_handshakes == 0)
    fail(Errc::invalid_argument, "StoreOptions::max_pending_handshakes must be > 0");
  if (options.handshake_timeout <= Duration::zero())
    fail(Errc::invalid_argument, "StoreOptions::handshake_timeout must be positive");
  // Authentication is never off: an empty secret would let anyone who finds the port in.
  if (options.secret.empty()) {
    fail(Errc::invalid_argument,
         "the store needs a non-empty job secret (StoreOptions::secret; for a job, FERRY_SECRET)");
  }
  if (options.listen_fd >= 0) {
    listener = net::adopt_listener(options.listen_fd);
    port = net::local_port(listener.get());
    if (options.port != 0 && options.port != port) {
      fail(Errc::invalid_argument, "the listening socket handed to the store (descriptor " +
                                       std::to_string(options.listen_fd) + ") is bound to port " +
                                       std::to_string(port) + ", not the store's port " +
                                       std::to_string(options.port));
    }
  } else {
    listener = net::listen_tcp(options.host, options.port);
    port = net::local_port(listener.get());
  }
  wakeup = net::Fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!wakeup.valid()) fail_errno("eventfd for the store server", errno);
  read_scratch.resize(kReadChunkBytes);
  thread = std::thread([this] { run_guarded(); });
}

StoreServer::Impl::~Impl() {
  std::uint64_t one = 1;
  // An eventfd write of 8 bytes cannot be partial; if it failed the join below would hang, so say why.
  if (::write(wakeup.get(), &one, sizeof(one)) != sizeof(one)) log("cannot signal the server thread to stop");
  if (thread.joinable()) thread.join();
}

void StoreServer::Impl::run_guarded() {
  try {
    run();
  } catch (const std::exception& error) {
    log(std::string("server thread stopped: ") + error.what());
  }
  drop_log.flush(Clock::now(), true);
  // Closing every socket turns each client's pending call into a prompt "lost connection" instead of a wait
  // until its deadline.
  connections.clear();
  listener.reset();
}

StoreServer::Impl::Connection* StoreServer::Impl::find(std::uint64_t id) {
  auto it = connections.find(id);
  return it == connections.end() || it->second->dead ? nullptr : it->second.get();
}

int StoreServer::Impl::poll_timeout_ms(Clock::time_point now) const {
  if (!pump_queue.empty()) return 0;
  bool have_deadline = false;
  Clock::time_point earliest{};
  auto consider = [&](Clock::time_point when) {
    if (!have_deadline || when < earliest) earliest = when;
    have_deadline = true;
  };
  for (const auto& [id, connection] : connections) {
    if (connection->parked) consider(connection->parked_deadline);
    if (!connection->authenticated()) consider(connection->handshake_deadline);
  }
  if (accept_paused_until > now) consider(accept_paused_until);
  if (drop_log.next_flush() != Clock::time_point::max()) consider(drop_log.next_flush());
  if (!have_deadline) return -1;  // sleep until a socket or the stop signal wakes us
  return Deadline(earliest - now).remaining_ms();
}

void StoreServer::Impl::run() {
  std::vector<pollfd> fds;
  std::vector<std::uint64_t> ids;  // ids[i] owns fds[i + first_connection]
  for (;;) {
    Clock::time_point now = Clock::now();
    fds.clear();
    ids.clear();
    fds.push_back({wakeup.get(), POLLIN, 0});
    bool accepting = listener.valid() && now >= accept_paused_until;
    if (accepting) fds.push_back({listener.get(), POLLIN, 0});
    const std::size_t first_connection = fds.size();
    for (const auto& [id, connection] : connections) {
      short events = 0;
      if (connection->out_pending()) {
        events = POLLOUT;
      } else if (connection->parked) {
        events = POLLRDHUP;  // not reading, but notice a client that went away while it waits
      } else {
        events = POLLIN;
      }
      fds.push_back({connection->fd.get(), events, 0});
      ids.push_back(id);
    }

    int ready = poll(fds.data(), fds.size(), poll_timeout_ms(now));
    if (ready < 0) {
      if (errno == EINTR) continue;
      fail_errno("poll in the store server", errno);
    }
    if (fds[0].revents != 0) return;  // stop requested
    if (accepting && fds[1].revents != 0) accept_pending();

    for (std::size_t i = 0; i < ids.size(); ++i) {
      short revents = fds[first_connection + i].revents;
      if (revents == 0) continue;
      Connection* connection = find(ids[i]);
      if (connection == nullptr) continue;
      if (revents & POLLOUT) {
        flush(*connection);
        if (!connection->dead && !connection->busy()) pump_queue.push_back(connection->id);
      } else if (revents & POLLIN) {
        read_from(*connection);
      } else if (revents & (POLLERR | POLLHUP | POLLRDHUP | POLLNVAL)) {
        close_quietly(*connection);  // gone while parked (or an error we cannot read past)
      }
    }
    drain_pump_queue();
    expire_deadlines(Clock::now());
    drain_pump_queue();
    drop_log.flush(Clock::now());

    for (auto it = connections.begin(); it != connections.end();) {
      it = it->second->dead ? connections.erase(it) : std::next(it);
    }
    publish_counters();
  }
}

void StoreServer::Impl::accept_pending() {
  // Bounded per wakeup so a connection storm does not starve requests already in flight.
  for (int accepted = 0; accepted < 64; ++accepted) {
    net::Fd fd = net::accept_tcp(listener.get());
    if (!fd.valid()) {
      int err = errno;
      if (err == EAGAIN || err == EWOULDBLOCK) return;
      if (err == ECONNABORTED || err == EPROTO || err == EPERM) continue;  // that one peer's problem
      if (err == EMFILE || err == ENFILE || err == ENOBUFS || err == ENOMEM) {
        log(std::string("cannot accept connections for now: ") + std::strerror(err) + " (" +
            std::to_string(connections.size()) + " open)");
        accept_paused_until = Clock::now() + kAcceptPauseOnExhaustion;
        return;
      }
      fail_errno("accept on the store listener", err);
    }
    auto connection = std::make_unique<Connection>();
    connection->id = next_id++;
    connection->fd = std::move(fd);
    connection->peer = net::peer_endpoint(connection->fd.get());
    connection->handshake_deadline =
        Clock::now() + std::min<Duration>(options.timeout, options.handshake_timeout);
    connection->state.server_nonce = auth::random_nonce();
    if (handshaking.size() >= options.max_pending_handshakes) evict_oldest_handshake();
    if (connections.size() >= kMaxConnections) {
      refused_connections.fetch_add(1, std::memory_order_relaxed);
      drop(*connection, wire::kErrorLimit,
           "too many connections (limit " + std::to_string(kMaxConnections) + ")",
           "over the connection limit");
      continue;
    }
    handshaking.insert(connection->id);
    connections.emplace(connection->id, std::move(connection));
  }
  publish_counters();
}

void StoreServer::Impl::evict_oldest_handshake() {
  while (!handshaking.empty()) {
    const std::uint64_t oldest = *handshaking.begin();
    handshaking.erase(handshaking.begin());
    Connection* connection = find(oldest);
    if (connection == nullptr) continue;
    refused_connections.fetch_add(1, std::memory_order_relaxed);
    drop(*connection, wire::kErrorLimit,
         "too many connections authenticating at once (limit " +
             std::to_string(options.max_pending_handshakes) + "): the oldest is dropped for a new one",
         "evicted while authenticating");
    return;
  }
}

void StoreServer::Impl::announce_failure() {
  for (auto& [id, connection] : connections) {
    if (connection->dead || !connection->parked) continue;
    // A GET of a lost rank's key waits on: the store itself will set it.
    if (!connection->watching && wire::is_lost_rank_key(connection->parked_key)) continue;
    const bool watching = connection->watching;
    const std::string key = connection->parked_key;
    unpark(*connection);
    if (watching) {
      reply_text(*connection, Opcode::value, key, members.failure());
    } else {
      reply_text(*connection, Opcode::error, wire::kErrorFailed, members.failure());
    }
    pump_queue.push_back(id);
  }
}

void StoreServer::Impl::note_departure(Connection& connection, const std::string& how) {
  if (!connection.state.seat.joined) return;
  const Membership::Loss loss = members.lost(connection.state.seat, how);
  if (loss.job_failed) {
    log("the job failed: " + members.failure());
    announce_failure();
  }
  if (loss.counted) {
    // Published after the failure's announcement (which answers every other parked GET): the ranks that
    // follow the lost ranks learn this one now.
    const std::string key = wire::lost_rank_key(loss.group, loss.index);
    const std::string rank = std::to_string(loss.rank);
    table.set(key, Bytes(rank.begin(), rank.end()));
    wake_waiters(key);
  }
}

StoreStats StoreServer::Impl::snapshot() const {
  StoreStats stats;
  stats.keys = table.keys();
  stats.bytes = table.bytes();
  stats.connections = connection_count.load(std::memory_order_relaxed);
  stats.failed_hellos = failed_hellos.load(std::memory_order_relaxed);
  stats.refused_connections = refused_connections.load(std::memory_order_relaxed);
  return stats;
}

void StoreServer::Impl::publish_counters() {
  std::uint64_t live = 0;
  for (const auto& [id, connection] : connections) live += connection->dead ? 0 : 1;
  connection_count.store(live, std::memory_order_relaxed);
}

void StoreServer::Impl::read_from(Connection& connection) {
  std::size_t budget = kReadBudgetPerWakeup;
  while (budget > 0 && !connection.dead) {
    ssize_t got = ::recv(connection.fd.get(), read_scratch.data(), read_scratch.size(), MSG_DONTWAIT);
    if (got > 0) {
      connection.in.insert(connection.in.end(), read_scratch.begin(), read_scratch.begin() + got);
      budget -= std::min(budget, static_cast<std::size_t>(got));
      // Process as we go so a header that must be rejected is rejected before its payload is buffered.
      pump(connection);
      if (connection.busy()) return;  // in-order processing: read more only once this request is answered
      continue;
    }
    if (got < 0 && errno == EINTR) continue;
    if (got < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;
    // got == 0: orderly close; otherwise a reset. Complete frames were already processed above.
    close_quietly(connection);
    return;
  }
}

void StoreServer::Impl::pump(Connection& connection) {
  while (!connection.dead && !connection.busy()) {
    const std::uint8_t* frame = connection.in.data() + connection.in_start;
    const wire::RequestScan scan = wire::scan_request(frame, connection.in.size() - connection.in_start,
                                                      options.max_message_bytes, connection.state.stage);
    if (scan.status == wire::RequestScan::Status::need_more) break;
    if (scan.status == wire::RequestScan::Status::rejected) {
      // Garbage instead of a HELLO is a failed attempt too (a scanner, or someone guessing the format).
      if (!connection.authenticated()) failed_hellos.fetch_add(1, std::memory_order_relaxed);
      drop(connection, wire::kErrorProtocol, scan.reason, "sent a bad first frame");
      return;
    }
    std::string_view key(reinterpret_cast<const char*>(frame + wire::kHeaderBytes), scan.header.key_len);
    handle_frame(connection, scan.header, key, frame + wire::kHeaderBytes + scan.header.key_len);
    if (connection.dead) return;  // its buffers are gone
    connection.in_start += scan.header.frame_bytes();
  }
  if (connection.dead) return;
  if (connection.in_start == connection.in.size()) {
    connection.in.clear();
    connection.in_start = 0;
    release_if_large(connection.in);
  } else if (connection.in_start > 0) {
    connection.in.erase(connection.in.begin(), connection.in.begin() + connection.in_start);
    connection.in_start = 0;
  }
}

void StoreServer::Impl::handle_frame(Connection& connection, const wire::FrameHeader& header,
                                     std::string_view key, const std::uint8_t* value) {
  const bool was_authenticated = connection.authenticated();
  RequestOutcome outcome =
      handle_request(table, members, options.secret, connection.state, header, key, value, snapshot());
  if (!was_authenticated && connection.authenticated()) handshaking.erase(connection.id);
  if (outcome.job_failed) log("the job failed: " + members.failure());
  switch (outcome.action) {
    case RequestOutcome::Action::drop:
      if (outcome.auth_failed) failed_hellos.fetch_add(1, std::memory_order_relaxed);
      drop(connection, outcome.error_kind, outcome.text,
           outcome.auth_failed ? "failed to prove the secret" : "broke the protocol while authenticating");
      break;
    case RequestOutcome::Action::park:
    case RequestOutcome::Action::watch:
      connection.parked = true;
      connection.watching = outcome.action == RequestOutcome::Action::watch;
      connection.parked_key = std::string(key);
      connection.parked_budget = std::chrono::milliseconds(outcome.park_budget_ms);
      connection.parked_deadline = Clock::now() + connection.parked_budget;
      if (!connection.watching) waiters[connection.parked_key].push_back(connection.id);
      // A zero budget times out on this very loop iteration (expire_deadlines runs after the handlers).
      break;
    case RequestOutcome::Action::reply:
      if (outcome.opcode == Opcode::error) {
        reply_text(connection, Opcode::error, outcome.error_kind, outcome.text);
      } else {
        const Bytes& bytes = outcome.value();
        reply(connection, outcome.opcode, key, bytes.data(), bytes.size());
      }
      if (outcome.key_changed) wake_waiters(std::string(key));
      break;
  }
  if (outcome.job_failed) announce_failure();
}

void StoreServer::Impl::wake_waiters(const std::string& key) {
  auto it = waiters.find(key);
  if (it == waiters.end()) return;
  std::vector<std::uint64_t> ids = std::move(it->second);
  waiters.erase(it);
  const Bytes* found = table.find(key);
  if (found == nullptr) return;
  const Bytes& value = *found;
  for (std::uint64_t id : ids) {
    Connection* waiter = find(id);
    if (waiter == nullptr || !waiter->parked || waiter->parked_key != key) continue;
    waiter->parked = false;
    reply(*waiter, Opcode::value, key, value.data(), value.size());
    pump_queue.push_back(id);  // it may hold further frames; processed after this handler, not recursively
  }
}

void StoreServer::Impl::unpark(Connection& connection) {
  if (!connection.parked) return;
  connection.parked = false;
  if (connection.watching) {
    connection.watching = false;
    return;
  }
  auto it = waiters.find(connection.parked_key);
  if (it == waiters.end()) return;
  auto& ids = it->second;
  ids.erase(std::remove(ids.begin(), ids.end(), connection.id), ids.end());
  if (ids.empty()) waiters.erase(it);
}

void StoreServer::Impl::expire_deadlines(Clock::time_point now) {
  for (auto& [id, connection] : connections) {
    if (connection->dead) continue;
    if (connection->parked && connection->parked_deadline <= now) {
      const bool watching = connection->watching;
      unpark(*connection);
      reply_text(*connection, Opcode::timeout, connection->parked_key,
                 watching
                     ? "the job did not fail within " + wire::describe_duration(connection->parked_budget)
                     : "key '" + connection->parked_key + "' was not set within " +
                           wire::describe_duration(connection->parked_budget));
      pump_queue.push_back(id);
    }
    if (!connection->authenticated() && connection->handshake_deadline <= now) {
      refused_connections.fetch_add(1, std::memory_order_relaxed);
      drop(*connection, wire::kErrorProtocol,
           "did not authenticate within " +
               wire::describe_duration(std::min<Duration>(options.timeout, options.handshake_timeout)),
           "too slow to authenticate");
    }
  }
}

void StoreServer::Impl::drain_pump_queue() {
  // Pumping one connection can wake others (a SET answers parked GETs), which queue themselves here.
  while (!pump_queue.empty()) {
    std::vector<std::uint64_t> batch;
    batch.swap(pump_queue);
    for (std::uint64_t id : batch) {
      if (Connection* connection = find(id)) pump(*connection);
    }
  }
}

void StoreServer::Impl::reply(Connection& connection, Opcode opcode, std::string_view key,
                              const std::uint8_t* value, std::size_t value_len) {
  if (connection.dead) return;
  wire::FrameHeader header{opcode, static_cast<std::uint32_t>(key.size()), value_len};
  auto encoded = wire::encode_header(header);
  connection.out.insert(connection.out.end(), encoded.begin(), encoded.end());
  connection.out.insert(connection.out.end(), key.begin(), key.end());
  if (value_len > 0) connection.out.insert(connection.out.end(), value, value + value_len);
  flush(connection);
}

void StoreServer::Impl::flush(Connection& connection) {
  while (connection.out_pending()) {
    ssize_t sent = ::send(connection.fd.get(), connection.out.data() + connection.out_start,
                          connection.out.size() - connection.out_start, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (sent > 0) {
      connection.out_start += static_cast<std::size_t>(sent);
      continue;
    }
    if (sent < 0 && errno == EINTR) continue;
    if (sent < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) return;  // POLLOUT will bring us back
    close_quietly(connection);
    return;
  }
  connection.out.clear();
  connection.out_start = 0;
  release_if_large(connection.out);
}

void StoreServer::Impl::drop(Connection& connection, std::string_view kind, const std::string& reason,
                             const std::string& summary_reason) {
  if (connection.dead) return;
  const std::string line = "dropping connection from " + connection.peer + ": " + reason;
  // A job's own clients are logged every time (rare, and worth reading); strangers in summary.
  if (connection.authenticated()) {
    log(line);
  } else {
    drop_log.dropped(summary_reason, line, Clock::now());
  }
  note_departure(connection, "the store dropped its connection: " + reason);
  reply_text(connection, Opcode::error, kind, reason);
  if (connection.dead) return;
  // Read what the peer already sent: closing with unread data makes the kernel send a reset, which can
  // destroy the ERROR reply before the peer reads it.
  std::size_t drained = 0;
  while (drained < kReadChunkBytes * 4) {
    ssize_t got = ::recv(connection.fd.get(), read_scratch.data(), read_scratch.size(), MSG_DONTWAIT);
    if (got <= 0) break;
    drained += static_cast<std::size_t>(got);
  }
  close_quietly(connection);
}

void StoreServer::Impl::close_quietly(Connection& connection) {
  if (connection.dead) return;
  note_departure(connection,
                 "its connection to the store closed before it checked out (the process was killed, crashed "
                 "or exited without leaving the job)");
  handshaking.erase(connection.id);
  unpark(connection);
  connection.dead = true;
  connection.fd.reset();
  Bytes().swap(connection.in);
  Bytes().swap(connection.out);
  connection.in_start = connection.out_start = 0;
}

StoreServer::StoreServer(const StoreOptions& options) : impl_(std::make_unique<Impl>(options)) {}
StoreServer::~StoreServer() = default;

std::uint16_t StoreServer::port() const {
  return impl_->port;
}

StoreStats StoreServer::stats() const {
  return impl_->snapshot();
}

}  // namespace ferry::transport
