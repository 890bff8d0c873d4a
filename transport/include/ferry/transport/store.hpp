// The bootstrap store: a small key/value service over TCP that rank 0 hosts and every rank uses to exchange
// addresses, memory handles and counts before any fabric exists.
//
// Wire protocol (transport/src/bootstrap/store_protocol.hpp): length-prefixed frames; every connection starts
// with a challenge-response in which both sides prove they know the job secret without sending it
// (store_auth.hpp). The server refuses to start without a secret. What a stranger can cost it is bounded:
// few unauthenticated connections at once (the oldest is dropped for a new one), a short deadline to
// authenticate, and a summarised log; a client that proves the secret is never refused for what strangers
// did. Frames over the size cap, with an unknown opcode, or arriving before authentication close the
// connection with a named reason. Every blocking operation carries a deadline; a timeout names the keys
// (and, for collectives, the ranks) still missing.
//
// Failures: ranks join their group (Store::join), and one whose connection closes before it leaves fails the
// job, as does any rank that reports a failure (Store::report_failure), a rank claimed twice, or ranks that
// disagree on the world size. From then on every wait on the store ends at once with Errc::peer_failure and
// the job's failure, and a StoreWatch (a thread parked on the store) tells code that is not talking to the
// store, such as the data path waiting for a peer.
//
// Lifetimes: a collective round's keys are erased by the last rank to finish with them, so barriers and
// all-gathers repeated any number of times leave the server's memory where it was (stats() shows it).
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"

namespace ferry::transport {

using Bytes = std::vector<std::uint8_t>;

// What a store server holds and has refused, for soak tests and diagnostics.
struct StoreStats {
  std::uint64_t keys = 0;                 // keys held
  std::uint64_t bytes = 0;                // key and value bytes held
  std::uint64_t connections = 0;          // open client connections
  std::uint64_t failed_hellos = 0;        // authentications refused (wrong proof, garbage before it), ever
  std::uint64_t refused_connections = 0;  // unauthenticated connections dropped for what they cost: too slow
                                          // to authenticate, evicted for a newer one, or over the limit
};

// The store rejected this client's secret (Errc::protocol). Its own type so that a caller who can obtain a
// newer secret (Group, reading rank 0's hand-over) can tell it from other protocol errors.
class SecretRejected : public Error {
 public:
  explicit SecretRejected(const std::string& message) : Error(Errc::protocol, message) {}
};

struct StoreOptions {
  std::string host = "127.0.0.1";  // where the server binds / where clients connect
  std::uint16_t port = 0;          // 0 on the server: pick a free port (see StoreServer::port())
  std::string secret;              // per-job secret; must match on every connection; never empty
  // Server only: a bound, listening TCP socket to serve on instead of binding host:port (ferry launch binds
  // the job's port once and hands the socket to rank 0, so the port is never free for someone else to take).
  // The server works on a duplicate and leaves this descriptor open. When `port` is not 0 it must match.
  int listen_fd = -1;
  // Server only: at most this many connections may be authenticating at once; a new one beyond drops the
  // oldest (ERROR "limit", which a client retries). A job's ranks authenticate in one round trip each.
  std::size_t max_pending_handshakes = 1024;
  // Server only: a connection that has not authenticated within this (or `timeout`, if shorter) is dropped.
  Duration handshake_timeout = std::chrono::seconds(10);
  // Server only: where its log lines go (each without the trailing newline); stderr, prefixed "ferry store:
  // ", when empty.
  std::function<void(const std::string& line)> log;
  std::size_t max_message_bytes = std::size_t{64} << 20;  // frames larger than this are rejected
  Duration timeout = kDefaultTimeout;                     // default deadline of every blocking call
  // Clients only: keep trying to connect while the server is not up (yet), until `timeout`. false: a refused
  // connection fails at once (Errc::peer_failure), for a client that would only talk to a running store.
  bool wait_for_server = true;
  // Clients only: prepended to every key this client names (set/get/wait/add/check and the keys of barrier
  // and all_gather), so several groups can share one server, each with collectives of the same names, and
  // never see each other's keys. Error messages show the full key.
  std::string key_prefix;
};

// The server side. Runs one thread with a poll loop; stops and joins in the destructor.
class StoreServer {
 public:
  explicit StoreServer(const StoreOptions& options);
  ~StoreServer();
  StoreServer(const StoreServer&) = delete;
  StoreServer& operator=(const StoreServer&) = delete;

  std::uint16_t port() const;  // the bound port (useful when options.port was 0)
  // A snapshot, safe to take from any thread while the server runs.
  StoreStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The client side. One TCP connection to the server, not thread-safe (one per thread if needed). Every wait
// fails at once with Errc::peer_failure and the job's failure once the job has failed.
class Store {
 public:
  // Connects (retrying until options.timeout while the server is not yet up) and authenticates.
  explicit Store(const StoreOptions& options);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  void set(const std::string& key, const Bytes& value);
  // Blocks until `key` exists (or the timeout passes) and returns its value.
  Bytes get(const std::string& key);
  Bytes get(const std::string& key, Duration timeout);
  // Blocks until every key exists.
  void wait(const std::vector<std::string>& keys);
  void wait(const std::vector<std::string>& keys, Duration timeout);
  // Atomically adds `delta` to the 64-bit counter at `key` (created at 0) and returns the new value.
  std::int64_t add(const std::string& key, std::int64_t delta);
  // True when the key exists, without waiting.
  bool check(const std::string& key);
  // Removes every key that starts with `prefix` and returns how many there were. With a key_prefix, "" means
  // all of this client's keys; without one, an empty prefix (every key of every client) is refused. Parked
  // GETs of a removed key keep waiting for it to be set again.
  std::size_t erase_prefix(const std::string& prefix);
  // The server's StoreStats, as it answers them.
  StoreStats server_stats();

  // Membership (see the top of this file). Joins this connection as `rank` of the group `group` ("" for the
  // whole job; the key prefix of a sub-group otherwise, not prefixed again) in a world of `world_size` ranks;
  // `label` says who this is in messages ("pid 12 on node0"). Throws Errc::peer_failure naming the problem
  // when the rank is claimed twice, the world sizes disagree or the job has failed already.
  void join(const std::string& group, int rank, int world_size, const std::string& label);
  // Checks out: from now on this connection's closing is not a failure.
  void leave(const std::string& group);
  // How many ranks of `group` joined and have neither left nor been lost; `failed` whether the job failed.
  std::size_t members_present(const std::string& group, bool* failed = nullptr);
  // Makes `text` the job's failure unless there is one already.
  void report_failure(const std::string& text);

  // Collectives over `world_size` participants; `name` must be unique per call site and round (the store
  // appends its own round counter so repeated calls with one name work). Timeouts name the missing ranks.
  // A round's keys live under "<name>/<round>/"; every rank counts itself out once it has read what it
  // needs, and the last one erases the round, so no round outlives its collective (a round that failed,
  // e.g. timed out, stays for the post-mortem).
  void barrier(const std::string& name, int rank, int world_size);
  void barrier(const std::string& name, int rank, int world_size, Duration timeout);
  std::vector<Bytes> all_gather(const std::string& name, int rank, int world_size, const Bytes& mine);
  std::vector<Bytes> all_gather(const std::string& name, int rank, int world_size, const Bytes& mine,
                                Duration timeout);

  Duration timeout() const;
  // "host:port" of the store this client talks to, for messages.
  const std::string& endpoint() const;
  // The local IP of the connection to the store (getsockname): the address this process uses to reach rank 0,
  // hence a good address to advertise to peers.
  std::string local_address() const;

 private:
  friend class StoreWatch;  // runs a Store connection of its own
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// A thread parked on the store until the job fails, on a connection of its own, so that code which is not
// talking to the store (the data path waiting for a peer, a teardown) learns of a failure within moments and
// can name it. Thread-safe.
class StoreWatch {
 public:
  // Connects and authenticates (as a Store does), then starts the thread. With `world_size` > 0 the thread,
  // once the job has failed, goes on following the ranks the store counts lost (a member whose connection
  // closed before it left: dead, not merely failing) for a job that goes on without them (the low-latency
  // mode masks them): those of the group options.key_prefix names (the whole job without one), numbered as
  // its ranks. `store_host`: the group's rank whose process hosts the store (marked lost when the watch
  // loses the store), -1 for none.
  explicit StoreWatch(const StoreOptions& options, int world_size = 0, int store_host = 0);
  ~StoreWatch();  // stops the thread
  StoreWatch(const StoreWatch&) = delete;
  StoreWatch& operator=(const StoreWatch&) = delete;

  // The job's failure, once the store has told it, or that the store is gone; empty before.
  std::string failure() const;
  // Throws Errc::peer_failure with failure(), if there is one.
  void check() const;
  // failure(), waiting up to `wait` for one. For a rank that has seen a peer go: the peer may be a survivor
  // that left once the job had failed (its cause is what the store says), or the cause itself (the store
  // names it within moments, since its connection closed too).
  std::string await_failure(Duration wait) const;
  // [world_size] words, non-zero for a rank the store counted lost, to be read with acquire
  // (std::atomic_ref); null without a world size. Set within moments of the store's noticing; never cleared.
  // "Lost" is the store's view: a member whose connection to it closed before it checked out (its process
  // died, or its client gave the connection up after a broken exchange). The store's host (store_host) is
  // marked when this watch loses the store.
  const std::uint64_t* lost_words() const;
  // The same ranks, in the order the store counted them.
  std::vector<int> lost_ranks() const;
  // The world size it was made with (0: it does not follow lost ranks).
  int world_size() const;
  // Makes `text` the job's failure unless there is one already, over a short-lived connection of its own
  // (best effort: a store that is gone cannot be told). Returns at once when the job has failed already.
  void report(const std::string& text) noexcept;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::transport
