// The store server: one thread, one poll loop, every socket non-blocking.
//
// Each connection has its own read buffer and write buffer, so a client that sends half a frame, sends
// garbage or stops reading its replies only ever stalls itself. Requests on one connection are answered
// strictly in order: while a GET is parked waiting for its key, or a reply has not been fully written, the
// connection's next frame is not processed (and its socket is not read, which pushes back on a client that
// pipelines).
//
// What a request means is decided in store_table.cpp (no sockets there); this file moves bytes, parks GETs,
// and keeps sources that keep failing HELLO out (hello_limiter.hpp).
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
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "bootstrap/hello_limiter.hpp"
#include "bootstrap/socket.hpp"
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
// A connection that has not authenticated by then is closed, so silent port scanners do not hold slots.
constexpr Duration kMaxHelloWait = 30s;
// Per wakeup, read at most this much from one connection, so one fast writer cannot starve the others.
constexpr std::size_t kReadBudgetPerWakeup = std::size_t{4} << 20;
constexpr std::size_t kReadChunkBytes = std::size_t{256} << 10;
// Buffers that grew past this for one large frame are released once drained.
constexpr std::size_t kKeepBufferCapacity = std::size_t{1} << 20;
// After running out of file descriptors, stop accepting for this long instead of spinning on the listener.
constexpr Duration kAcceptPauseOnExhaustion = 100ms;

void log_line(const std::string& text) {
  // One fprintf per line so lines from concurrent servers and ranks do not interleave mid-line.
  std::fprintf(stderr, "ferry store: %s\n", text.c_str());
}

struct Connection {
  std::uint64_t id = 0;
  net::Fd fd;
  std::string peer;         // "ip:port", for messages
  std::string peer_source;  // the IP alone: what failed HELLOs are counted against
  bool authenticated = false;
  Clock::time_point hello_deadline{};
  bool dead = false;

  Bytes in;  // received bytes; in[in_start..] not yet processed
  std::size_t in_start = 0;
  Bytes out;  // replies; out[out_start..] not yet written
  std::size_t out_start = 0;

  bool parked = false;  // a GET waits for parked_key
  std::string parked_key;
  Clock::time_point parked_deadline{};
  Duration parked_budget{};

  bool out_pending() const { return out_start < out.size(); }
  bool busy() const { return parked || out_pending(); }
};

void release_if_large(Bytes& buffer) {
  if (buffer.capacity() > kKeepBufferCapacity) Bytes().swap(buffer);
}

}  // namespace

struct StoreServer::Impl {
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
  // Refuses a connection whose source failed HELLO too often; true when it did.
  bool refuse_if_locked_out(Connection& connection);
  void count_failed_hello(const Connection& connection);
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
  // Logs the reason, tells the peer (best effort) and closes the connection.
  void drop(Connection& connection, std::string_view kind, const std::string& reason);
  // Closes without a word: the peer left on its own.
  void close_quietly(Connection& connection);
  void unpark(Connection& connection);
  Connection* find(std::uint64_t id);

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
  HelloLimiter hello_limiter;
  std::unordered_map<std::uint64_t, std::unique_ptr<Connection>> connections;
  std::unordered_map<std::string, std::vector<std::uint64_t>> waiters;  // key -> parked connection ids
  std::vector<std::uint64_t> pump_queue;  // connections that became idle and may hold unprocessed frames
  std::uint64_t next_id = 1;
  Clock::time_point accept_paused_until{};
  std::vector<std::uint8_t> read_scratch;

  std::thread thread;  // last: started once everything above exists
};

StoreServer::Impl::Impl(const StoreOptions& options_in)
    : options(options_in),
      hello_limiter(options_in.max_failed_hellos, options_in.hello_failure_window, options_in.hello_lockout) {
  if (options.max_message_bytes == 0)
    fail(Errc::invalid_argument, "StoreOptions::max_message_bytes must be > 0");
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
  if (::write(wakeup.get(), &one, sizeof(one)) != sizeof(one))
    log_line("cannot signal the server thread to stop");
  if (thread.joinable()) thread.join();
}

void StoreServer::Impl::run_guarded() {
  try {
    run();
  } catch (const std::exception& error) {
    log_line(std::string("server thread stopped: ") + error.what());
  }
  // Closing every socket turns each client's pending call into a prompt "lost connection" instead of a wait
  // until its deadline.
  connections.clear();
  listener.reset();
}

Connection* StoreServer::Impl::find(std::uint64_t id) {
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
    if (!connection->authenticated) consider(connection->hello_deadline);
  }
  if (accept_paused_until > now) consider(accept_paused_until);
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
        log_line(std::string("cannot accept connections for now: ") + std::strerror(err) + " (" +
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
    connection->peer_source = net::peer_ip(connection->fd.get());
    connection->hello_deadline = Clock::now() + std::min<Duration>(options.timeout, kMaxHelloWait);
    if (refuse_if_locked_out(*connection)) continue;
    if (connections.size() >= kMaxConnections) {
      drop(*connection, wire::kErrorLimit,
           "too many connections (limit " + std::to_string(kMaxConnections) + ")");
      continue;
    }
    connections.emplace(connection->id, std::move(connection));
  }
  publish_counters();
}

bool StoreServer::Impl::refuse_if_locked_out(Connection& connection) {
  const Duration left = hello_limiter.refused_for(connection.peer_source, Clock::now());
  if (left == Duration::zero()) return false;
  refused_connections.fetch_add(1, std::memory_order_relaxed);
  // Said once per connection, but not logged: a flood would otherwise flood the log too.
  reply_text(connection, Opcode::error, wire::kErrorLimit,
             "too many failed HELLOs from " + connection.peer_source + " (" +
                 std::to_string(hello_limiter.max_failures()) + " within " +
                 wire::describe_duration(hello_limiter.window()) +
                 "); its connections are refused for another " + wire::describe_duration(left));
  close_quietly(connection);
  return true;
}

void StoreServer::Impl::count_failed_hello(const Connection& connection) {
  failed_hellos.fetch_add(1, std::memory_order_relaxed);
  if (hello_limiter.record_failure(connection.peer_source, Clock::now())) {
    log_line("refusing connections from " + connection.peer_source + " for " +
             wire::describe_duration(options.hello_lockout) + ": " +
             std::to_string(options.max_failed_hellos) + " failed HELLOs within " +
             wire::describe_duration(options.hello_failure_window));
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
                                                      options.max_message_bytes, connection.authenticated);
    if (scan.status == wire::RequestScan::Status::need_more) break;
    if (scan.status == wire::RequestScan::Status::rejected) {
      // Garbage instead of a HELLO is a failed attempt too (a scanner, or someone guessing the format).
      if (!connection.authenticated) count_failed_hello(connection);
      drop(connection, wire::kErrorProtocol, scan.reason);
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
  RequestOutcome outcome =
      handle_request(table, options.secret, connection.authenticated, header, key, value, snapshot());
  switch (outcome.action) {
    case RequestOutcome::Action::drop:
      if (outcome.hello_failed) count_failed_hello(connection);
      drop(connection, outcome.error_kind, outcome.text);
      return;
    case RequestOutcome::Action::park:
      connection.parked = true;
      connection.parked_key = std::string(key);
      connection.parked_budget = std::chrono::milliseconds(outcome.park_budget_ms);
      connection.parked_deadline = Clock::now() + connection.parked_budget;
      waiters[connection.parked_key].push_back(connection.id);
      // A zero budget times out on this very loop iteration (expire_deadlines runs after the handlers).
      return;
    case RequestOutcome::Action::reply:
      if (outcome.opcode == Opcode::error) {
        reply_text(connection, Opcode::error, outcome.error_kind, outcome.text);
      } else {
        const Bytes& bytes = outcome.value();
        reply(connection, outcome.opcode, key, bytes.data(), bytes.size());
      }
      if (outcome.key_changed) wake_waiters(std::string(key));
      return;
  }
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
      unpark(*connection);
      reply_text(*connection, Opcode::timeout, connection->parked_key,
                 "key '" + connection->parked_key + "' was not set within " +
                     wire::describe_duration(connection->parked_budget));
      pump_queue.push_back(id);
    }
    if (!connection->authenticated && connection->hello_deadline <= now) {
      drop(*connection, wire::kErrorProtocol, "no HELLO within the authentication deadline");
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

void StoreServer::Impl::drop(Connection& connection, std::string_view kind, const std::string& reason) {
  if (connection.dead) return;
  log_line("dropping connection from " + connection.peer + ": " + reason);
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
