#include "bootstrap/store_table.hpp"

#include <algorithm>
#include <array>

namespace ferry::transport {
namespace {

using wire::Opcode;

// Longest GET wait honoured; keeps the server's deadline arithmetic far from overflow.
constexpr std::uint64_t kMaxWaitMs = std::uint64_t{30} * 24 * 3600 * 1000;

RequestOutcome drop(std::string_view kind, std::string reason) {
  RequestOutcome outcome;
  outcome.action = RequestOutcome::Action::drop;
  outcome.error_kind = kind;
  outcome.text = std::move(reason);
  return outcome;
}

RequestOutcome value_reply(Bytes bytes) {
  RequestOutcome outcome;
  outcome.opcode = Opcode::value;
  outcome.owned = std::move(bytes);
  return outcome;
}

// Only the store writes the lost ranks (a forged one would make survivors skip a live rank).
RequestOutcome reserved_key_reply(std::string_view key) {
  RequestOutcome outcome;
  outcome.opcode = Opcode::error;
  outcome.error_kind = wire::kErrorSemantic;
  outcome.text =
      "key '" + std::string(key) + "' is the store's own (a rank it counted lost): clients cannot write it";
  return outcome;
}

Bytes u64_bytes(std::uint64_t number) {
  Bytes bytes(8);
  wire::put_u64(bytes.data(), number);
  return bytes;
}

}  // namespace

const Bytes* StoreTable::find(const std::string& key) const {
  auto it = values_.find(key);
  return it == values_.end() ? nullptr : &it->second;
}

void StoreTable::set(const std::string& key, Bytes value) {
  auto [it, fresh] = values_.try_emplace(key);
  held_bytes_ -= fresh ? 0 : it->second.size();
  held_bytes_ += (fresh ? key.size() : 0) + value.size();
  it->second = std::move(value);
  account();
}

std::uint8_t* StoreTable::counter(const std::string& key) {
  auto [it, fresh] = values_.try_emplace(key);
  if (fresh) {
    it->second.assign(8, 0);
    held_bytes_ += key.size() + 8;
    account();
  }
  return it->second.size() == 8 ? it->second.data() : nullptr;
}

std::size_t StoreTable::erase_prefix(std::string_view prefix, bool (*keep)(std::string_view)) {
  std::size_t erased = 0;
  auto it = values_.lower_bound(prefix);
  while (it != values_.end() && std::string_view(it->first).substr(0, prefix.size()) == prefix) {
    if (keep != nullptr && keep(it->first)) {
      ++it;
      continue;
    }
    held_bytes_ -= it->first.size() + it->second.size();
    it = values_.erase(it);
    ++erased;
  }
  account();
  return erased;
}

void StoreTable::account() {
  keys_.store(values_.size(), std::memory_order_relaxed);
  bytes_.store(held_bytes_, std::memory_order_relaxed);
}

RequestOutcome failed_reply(const Membership& members) {
  RequestOutcome outcome;
  outcome.opcode = Opcode::error;
  outcome.error_kind = wire::kErrorFailed;
  outcome.text = members.failure();
  return outcome;
}

RequestOutcome handle_request(StoreTable& table, Membership& members, std::string_view secret,
                              ConnectionState& connection, const wire::FrameHeader& header,
                              std::string_view key, const std::uint8_t* value, const StoreStats& stats) {
  const std::size_t value_len = static_cast<std::size_t>(header.value_len);
  const std::string_view bytes(reinterpret_cast<const char*>(value), value_len);
  if (!connection.authenticated() && header.opcode != Opcode::hello && header.opcode != Opcode::prove)
    return drop(wire::kErrorProtocol,
                std::string(wire::opcode_name(header.opcode)) + " before authentication");
  switch (header.opcode) {
    case Opcode::hello: {
      if (connection.stage != wire::AuthStage::hello)
        return drop(wire::kErrorProtocol, "a second HELLO on this connection");
      if (value_len != auth::kNonceBytes) {
        return drop(wire::kErrorProtocol, "HELLO must carry a " + std::to_string(auth::kNonceBytes) +
                                              "-byte nonce, got " + std::to_string(value_len) + " bytes");
      }
      std::copy(value, value + value_len, connection.client_nonce.begin());
      connection.stage = wire::AuthStage::prove;
      RequestOutcome outcome =
          value_reply(Bytes(connection.server_nonce.begin(), connection.server_nonce.end()));
      outcome.opcode = Opcode::challenge;
      return outcome;
    }
    case Opcode::prove: {
      if (connection.stage != wire::AuthStage::prove)
        return drop(wire::kErrorProtocol, "PROVE without a HELLO before it");
      const crypto::Digest expected =
          auth::client_proof(secret, connection.client_nonce, connection.server_nonce);
      // An empty secret never authenticates: the server refuses to start with one, and this keeps it so.
      if (secret.empty() || !crypto::constant_time_equal(bytes, crypto::view(expected))) {
        RequestOutcome outcome = drop(wire::kErrorSecret, "wrong proof of the job secret");
        outcome.auth_failed = true;
        return outcome;
      }
      connection.stage = wire::AuthStage::done;
      const crypto::Digest proof =
          auth::server_proof(secret, connection.client_nonce, connection.server_nonce);
      RequestOutcome outcome = value_reply(Bytes(proof.begin(), proof.end()));
      outcome.opcode = Opcode::ok;
      return outcome;
    }
    case Opcode::join: {
      if (value_len < 8) {
        return drop(wire::kErrorProtocol,
                    "JOIN must carry a rank and a world size (8 bytes), got " + std::to_string(value_len));
      }
      if (members.failed()) return failed_reply(members);
      const auto rank = static_cast<std::uint32_t>(wire::get_u64(value) & 0xffffffffu);
      const auto world = static_cast<std::uint32_t>(wire::get_u64(value) >> 32);
      std::string label(bytes.substr(8, wire::kMaxFailureBytes));
      std::string refusal = members.join(std::string(key), rank, world, std::move(label), connection.seat);
      if (refusal.empty()) return {};
      RequestOutcome outcome;
      outcome.opcode = Opcode::error;
      outcome.error_kind = members.failed() ? wire::kErrorMember : wire::kErrorSemantic;
      outcome.job_failed = members.failed();
      outcome.text = std::move(refusal);
      return outcome;
    }
    case Opcode::leave: {
      if (!connection.seat.joined || connection.seat.group != key) {
        RequestOutcome outcome;
        outcome.opcode = Opcode::error;
        outcome.error_kind = wire::kErrorSemantic;
        outcome.text = "LEAVE of a group this connection did not join";
        return outcome;
      }
      members.leave(connection.seat);
      return {};
    }
    case Opcode::members: {
      Bytes reply(9);
      wire::put_u64(reply.data(), members.present(std::string(key)));
      reply[8] = members.failed() ? 1 : 0;
      return value_reply(std::move(reply));
    }
    case Opcode::fail: {
      RequestOutcome outcome;
      outcome.job_failed = members.fail(std::string(bytes.substr(0, wire::kMaxFailureBytes)));
      return outcome;
    }
    case Opcode::watch: {
      if (value_len != 8) {
        return drop(wire::kErrorProtocol,
                    "WATCH must carry an 8-byte wait budget, got " + std::to_string(value_len) + " bytes");
      }
      if (members.failed()) return value_reply(Bytes(members.failure().begin(), members.failure().end()));
      RequestOutcome outcome;
      outcome.action = RequestOutcome::Action::watch;
      outcome.park_budget_ms = std::min(wire::get_u64(value), kMaxWaitMs);
      return outcome;
    }
    case Opcode::set: {
      if (wire::is_lost_rank_key(key)) return reserved_key_reply(key);
      table.set(std::string(key), Bytes(value, value + value_len));
      RequestOutcome outcome;
      outcome.key_changed = true;
      return outcome;
    }
    case Opcode::get: {
      if (value_len != 8) {
        return drop(wire::kErrorProtocol,
                    "GET must carry an 8-byte wait budget, got " + std::to_string(value_len) + " bytes");
      }
      if (const Bytes* found = table.find(std::string(key))) {
        RequestOutcome outcome;
        outcome.opcode = Opcode::value;
        outcome.borrowed = found;
        return outcome;
      }
      // Whoever would set it may be gone; but the store itself publishes lost ranks, failed job or not.
      if (members.failed() && !wire::is_lost_rank_key(key)) return failed_reply(members);
      RequestOutcome outcome;
      outcome.action = RequestOutcome::Action::park;
      outcome.park_budget_ms = std::min(wire::get_u64(value), kMaxWaitMs);
      return outcome;
    }
    case Opcode::check:
      return value_reply(Bytes{static_cast<std::uint8_t>(table.contains(std::string(key)) ? 1 : 0)});
    case Opcode::add: {
      if (value_len != 8) {
        return drop(wire::kErrorProtocol,
                    "ADD must carry an 8-byte delta, got " + std::to_string(value_len) + " bytes");
      }
      if (wire::is_lost_rank_key(key)) return reserved_key_reply(key);
      std::string name(key);
      std::uint8_t* counter = table.counter(name);
      if (counter == nullptr) {
        RequestOutcome outcome;
        outcome.opcode = Opcode::error;
        outcome.error_kind = wire::kErrorSemantic;
        outcome.text = "key '" + name + "' holds " + std::to_string(table.find(name)->size()) +
                       " bytes, not a 64-bit counter";
        return outcome;
      }
      // Two's-complement wrap-around instead of signed overflow (undefined behaviour).
      wire::put_u64(counter, wire::get_u64(counter) + wire::get_u64(value));
      RequestOutcome outcome = value_reply(Bytes(counter, counter + 8));
      outcome.key_changed = true;
      return outcome;
    }
    case Opcode::erase: {
      // An empty prefix would wipe every group's keys, this client's and everyone else's.
      if (key.empty()) return drop(wire::kErrorProtocol, "ERASE needs a non-empty key prefix");
      return value_reply(u64_bytes(table.erase_prefix(key, wire::is_lost_rank_key)));
    }
    case Opcode::stats: {
      const std::array<std::uint64_t, wire::kStatsFields> fields{
          stats.keys, stats.bytes, stats.connections, stats.failed_hellos, stats.refused_connections};
      Bytes bytes(8 * fields.size());
      for (std::size_t i = 0; i < fields.size(); ++i) wire::put_u64(bytes.data() + 8 * i, fields[i]);
      return value_reply(std::move(bytes));
    }
    default:
      return drop(wire::kErrorProtocol, "unexpected opcode " + std::string(wire::opcode_name(header.opcode)));
  }
}

}  // namespace ferry::transport
