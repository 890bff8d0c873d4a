// The store server: one thread, one poll loop, every socket non-blocking.
//
// Each connection has its own read buffer and write buffer, so a client that sends half a frame, sends
// garbage or stops reading its replies only ever stalls itself. Requests on one connection are answered
// strictly in order: while a GET is parked waiting for its key, or a reply has not been fully written, the
// connection's next frame is not processed (and its socket is not read, which pushes back on a client that
// pipelines).
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <unordered_map>
#include <vector>

#include "bootstrap/socket.hpp"
#include "bootstrap/store_protocol.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/store.hpp"

namespace ferry::transport {
namespace {

using namespace std::chrono_literals;
using wire::Opcode;

// Beyond this many open client connections new ones are refused with a named reason. A job opens one per
// rank (plus a few per-thread ones), so 4096 is far above need and far below typical fd limits.
constexpr std::size_t kMaxConnections = 4096;
// An unauthenticated peer may not make the server buffer more than this, whatever max_message_bytes says.
constexpr std::size_t kMaxHelloValueBytes = 4096;
// A connection that has not authenticated by then is closed, so silent port scanners do not hold slots.
constexpr Duration kMaxHelloWait = 30s;
// Longest GET wait honoured; keeps deadline arithmetic far from overflow.
constexpr std::uint64_t kMaxWaitMs = std::uint64_t{30} * 24 * 3600 * 1000;
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
  std::string peer;
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

  // Everything below belongs to the server thread.
  std::unordered_map<std::string, Bytes> values;
  std::unordered_map<std::uint64_t, std::unique_ptr<Connection>> connections;
  std::unordered_map<std::string, std::vector<std::uint64_t>> waiters;  // key -> parked connection ids
  std::vector<std::uint64_t> pump_queue;  // connections that became idle and may hold unprocessed frames
  std::uint64_t next_id = 1;
  Clock::time_point accept_paused_until{};
  std::vector<std::uint8_t> read_scratch;

  std::thread thread;  // last: started once everything above exists
};

StoreServer::Impl::Impl(const StoreOptions& options_in) : options(options_in) {
  if (options.max_message_bytes == 0)
    fail(Errc::invalid_argument, "StoreOptions::max_message_bytes must be > 0");
  listener = net::listen_tcp(options.host, options.port);
  port = net::local_port(listener.get());
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
    connection->hello_deadline = Clock::now() + std::min<Duration>(options.timeout, kMaxHelloWait);
    if (connections.size() >= kMaxConnections) {
      drop(*connection, wire::kErrorLimit,
           "too many connections (limit " + std::to_string(kMaxConnections) + ")");
      continue;
    }
    connections.emplace(connection->id, std::move(connection));
  }
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
    std::size_t available = connection.in.size() - connection.in_start;
    if (available < wire::kHeaderBytes) break;
    const std::uint8_t* frame = connection.in.data() + connection.in_start;
    wire::FrameHeader header;
    try {
      header = wire::decode_header(frame, options.max_message_bytes);
    } catch (const Error& error) {
      drop(connection, wire::kErrorProtocol, wire::bare_message(error));
      return;
    }
    if (!wire::is_request(header.opcode)) {
      drop(connection, wire::kErrorProtocol,
           "a client sent the reply opcode " + std::string(wire::opcode_name(header.opcode)));
      return;
    }
    if (!connection.authenticated) {
      if (header.opcode != Opcode::hello) {
        drop(connection, wire::kErrorProtocol,
             std::string(wire::opcode_name(header.opcode)) + " frame before HELLO");
        return;
      }
      if (header.value_len > kMaxHelloValueBytes) {
        drop(connection, wire::kErrorProtocol,
             "HELLO secret of " + std::to_string(header.value_len) + " bytes exceeds " +
                 std::to_string(kMaxHelloValueBytes));
        return;
      }
    }
    if (available < header.frame_bytes()) break;  // wait for the rest of the frame
    std::string_view key(reinterpret_cast<const char*>(frame + wire::kHeaderBytes), header.key_len);
    handle_frame(connection, header, key, frame + wire::kHeaderBytes + header.key_len);
    if (connection.dead) return;  // its buffers are gone
    connection.in_start += header.frame_bytes();
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
  const std::size_t value_len = static_cast<std::size_t>(header.value_len);
  switch (header.opcode) {
    case Opcode::hello: {
      if (connection.authenticated) {
        drop(connection, wire::kErrorProtocol, "second HELLO on an authenticated connection");
        return;
      }
      std::string_view offered(reinterpret_cast<const char*>(value), value_len);
      if (!wire::constant_time_equal(offered, options.secret)) {
        drop(connection, wire::kErrorSecret, "wrong job secret");
        return;
      }
      connection.authenticated = true;
      reply(connection, Opcode::ok, key, nullptr, 0);
      return;
    }
    case Opcode::set: {
      std::string name(key);
      values.insert_or_assign(name, Bytes(value, value + value_len));
      reply(connection, Opcode::ok, key, nullptr, 0);
      wake_waiters(name);
      return;
    }
    case Opcode::get: {
      if (value_len != 8) {
        drop(connection, wire::kErrorProtocol,
             "GET must carry an 8-byte wait budget, got " + std::to_string(value_len) + " bytes");
        return;
      }
      std::string name(key);
      if (auto it = values.find(name); it != values.end()) {
        reply(connection, Opcode::value, key, it->second.data(), it->second.size());
        return;
      }
      std::uint64_t budget_ms = std::min(wire::get_u64(value), kMaxWaitMs);
      connection.parked = true;
      connection.parked_key = std::move(name);
      connection.parked_budget = std::chrono::milliseconds(budget_ms);
      connection.parked_deadline = Clock::now() + connection.parked_budget;
      waiters[connection.parked_key].push_back(connection.id);
      // A zero budget times out on this very loop iteration (expire_deadlines runs after the handlers).
      return;
    }
    case Opcode::check: {
      std::uint8_t present = values.count(std::string(key)) ? 1 : 0;
      reply(connection, Opcode::value, key, &present, 1);
      return;
    }
    case Opcode::add: {
      if (value_len != 8) {
        drop(connection, wire::kErrorProtocol,
             "ADD must carry an 8-byte delta, got " + std::to_string(value_len) + " bytes");
        return;
      }
      std::string name(key);
      Bytes& counter = values[name];
      if (counter.empty()) counter.assign(8, 0);
      if (counter.size() != 8) {
        reply_text(
            connection, Opcode::error, wire::kErrorSemantic,
            "key '" + name + "' holds " + std::to_string(counter.size()) + " bytes, not a 64-bit counter");
        return;
      }
      // Two's-complement wrap-around instead of signed overflow (undefined behaviour).
      std::uint64_t total = wire::get_u64(counter.data()) + wire::get_u64(value);
      wire::put_u64(counter.data(), total);
      reply(connection, Opcode::value, key, counter.data(), counter.size());
      wake_waiters(name);
      return;
    }
    default:
      drop(connection, wire::kErrorProtocol,
           "unexpected opcode " + std::string(wire::opcode_name(header.opcode)));
      return;
  }
}

void StoreServer::Impl::wake_waiters(const std::string& key) {
  auto it = waiters.find(key);
  if (it == waiters.end()) return;
  std::vector<std::uint64_t> ids = std::move(it->second);
  waiters.erase(it);
  const Bytes& value = values.at(key);
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

}  // namespace ferry::transport
