// What the store server holds and what each request does to it, without sockets, clocks or randomness: the
// server (store_server.cpp) does the I/O, the waiting and draws the nonces around it, and the store fuzz
// target drives the same code with arbitrary bytes.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

#include "bootstrap/store_auth.hpp"
#include "bootstrap/store_members.hpp"
#include "bootstrap/store_protocol.hpp"
#include "ferry/transport/store.hpp"

namespace ferry::transport {

// The keys and values, ordered so that ERASE finds a prefix's keys without a scan, and what they cost.
// Written by one thread (the server's); keys() and bytes() may be read from any thread.
class StoreTable {
 public:
  const Bytes* find(const std::string& key) const;
  bool contains(const std::string& key) const { return find(key) != nullptr; }
  void set(const std::string& key, Bytes value);
  // The 64-bit counter at `key`, created at 0 when absent; null when the key holds something else.
  std::uint8_t* counter(const std::string& key);
  // Erases the keys that start with `prefix`, but those `keep` says to keep (when given); returns how many.
  std::size_t erase_prefix(std::string_view prefix, bool (*keep)(std::string_view) = nullptr);

  std::size_t keys() const { return keys_.load(std::memory_order_relaxed); }
  std::size_t bytes() const { return bytes_.load(std::memory_order_relaxed); }

 private:
  void account();

  std::map<std::string, Bytes, std::less<>> values_;
  std::size_t held_bytes_ = 0;  // key + value bytes; mirrored into bytes_
  std::atomic<std::size_t> keys_{0};
  std::atomic<std::size_t> bytes_{0};
};

// One connection as far as its requests go: how far it is through authentication, and where it joined.
struct ConnectionState {
  wire::AuthStage stage = wire::AuthStage::hello;
  auth::Nonce client_nonce{};
  auth::Nonce server_nonce{};  // drawn by the server when it accepts the connection
  Membership::Seat seat;

  bool authenticated() const { return stage == wire::AuthStage::done; }
};

// What the server must do with one complete request frame.
struct RequestOutcome {
  enum class Action {
    reply,  // send `opcode` with the request's key and value()
    park,   // GET of a key that does not exist yet: wait up to park_budget_ms for a SET or ADD of it
    watch,  // WATCH before the job failed: wait up to park_budget_ms for its failure
    drop,   // send ERROR(error_kind, text) and close the connection
  };
  Action action = Action::reply;
  wire::Opcode opcode = wire::Opcode::ok;
  std::string_view error_kind;  // drop, or reply with Opcode::error
  std::string text;             // drop: the reason; error reply: the message
  bool key_changed = false;     // the request set or changed the key: waiters on it may be answered
  bool auth_failed = false;     // a wrong proof of the secret (the server counts these)
  bool job_failed = false;      // the request made the job fail: every waiter must be answered with it
  std::uint64_t park_budget_ms = 0;

  // The reply's value: bytes held by the table (valid until the table changes) or owned here.
  const Bytes& value() const { return borrowed != nullptr ? *borrowed : owned; }
  const Bytes* borrowed = nullptr;
  Bytes owned;
};

// Applies one request (a frame scan_request() found complete for the connection's stage) to `table` and
// `members`. `connection` advances through authentication and joins here; `stats` is what STATS reports.
RequestOutcome handle_request(StoreTable& table, Membership& members, std::string_view secret,
                              ConnectionState& connection, const wire::FrameHeader& header,
                              std::string_view key, const std::uint8_t* value, const StoreStats& stats);

// The GET answer for a job that has failed: ERROR("failed") with its text.
RequestOutcome failed_reply(const Membership& members);

}  // namespace ferry::transport
