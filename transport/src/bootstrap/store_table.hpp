// What the store server holds and what each request does to it, without sockets or clocks: the server
// (store_server.cpp) does the I/O and the waiting around it, and the store fuzz target drives the same code
// with arbitrary bytes.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <map>
#include <string>
#include <string_view>

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
  // Removes every key that starts with `prefix`; returns how many.
  std::size_t erase_prefix(std::string_view prefix);

  std::size_t keys() const { return keys_.load(std::memory_order_relaxed); }
  std::size_t bytes() const { return bytes_.load(std::memory_order_relaxed); }

 private:
  void account();

  std::map<std::string, Bytes, std::less<>> values_;
  std::size_t held_bytes_ = 0;  // key + value bytes; mirrored into bytes_
  std::atomic<std::size_t> keys_{0};
  std::atomic<std::size_t> bytes_{0};
};

// What the server must do with one complete request frame.
struct RequestOutcome {
  enum class Action {
    reply,  // send `opcode` with the request's key and value()
    park,   // GET of a key that does not exist yet: wait up to park_budget_ms for a SET or ADD of it
    drop,   // send ERROR(error_kind, text) and close the connection
  };
  Action action = Action::reply;
  wire::Opcode opcode = wire::Opcode::ok;
  std::string_view error_kind;  // drop, or reply with Opcode::error
  std::string text;             // drop: the reason; error reply: the message
  bool key_changed = false;     // the request set or changed the key: waiters on it may be answered
  bool hello_failed = false;    // a HELLO with the wrong secret (the server counts these per source)
  std::uint64_t park_budget_ms = 0;

  // The reply's value: bytes held by the table (valid until the table changes) or owned here.
  const Bytes& value() const { return borrowed != nullptr ? *borrowed : owned; }
  const Bytes* borrowed = nullptr;
  Bytes owned;
};

// Applies one request (a frame scan_request() found complete, so a HELLO first and nothing else before it)
// to `table`. `authenticated` is the connection's state, updated by HELLO; `stats` is what STATS reports.
RequestOutcome handle_request(StoreTable& table, std::string_view secret, bool& authenticated,
                              const wire::FrameHeader& header, std::string_view key,
                              const std::uint8_t* value, const StoreStats& stats);

}  // namespace ferry::transport
