// The store client: one connection, strictly one request in flight, every receive bounded by a deadline.
//
// Once a call fails midway (connection lost, reply overdue, garbage reply) the byte stream can no longer be
// trusted to line up with requests, so the client remembers why and fails every later call with that reason
// instead of reading a stale reply. An ERROR "failed" (the job failed) is a whole reply: the connection stays
// usable, so a rank can still check out.
//
// StoreWatch (at the end) parks a WATCH on a connection of its own and waits for it beside an eventfd, so
// that stopping it never waits for the store; once the job failed it parks GETs of the lost ranks' keys the
// same way.
#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <atomic>
#include <charconv>
#include <condition_variable>
#include <cstring>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "bootstrap/socket.hpp"
#include "bootstrap/store_auth.hpp"
#include "bootstrap/store_protocol.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/store.hpp"

namespace ferry::transport {
namespace {

using namespace std::chrono_literals;
using wire::Opcode;

// How long past a GET's wait budget the client still waits for the server's TIMEOUT reply before it concludes
// the server is hung. The server answers at the budget, so this only matters when it is stuck or starved.
constexpr Duration kReplyGrace = 2s;
// A connection attempt is worth making only with at least this much of the deadline left.
constexpr Duration kMinAttempt = 50ms;
// Missing ranks listed in a timeout message before the rest is summarized as a count.
constexpr std::size_t kMaxRanksListed = 32;

std::string quote(std::string_view key) {
  constexpr std::size_t kShown = 120;
  if (key.size() <= kShown) return "'" + std::string(key) + "'";
  return "'" + std::string(key.substr(0, kShown)) + "...' (" + std::to_string(key.size()) + " bytes)";
}

// "GET 'key'", or just "HELLO" for requests without a key.
std::string describe_request(Opcode opcode, std::string_view key) {
  return std::string(wire::opcode_name(opcode)) + (key.empty() ? "" : " " + quote(key));
}

std::string list_ranks(const std::vector<int>& ranks) {
  std::string text;
  for (std::size_t i = 0; i < ranks.size() && i < kMaxRanksListed; ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(ranks[i]);
  }
  if (ranks.size() > kMaxRanksListed)
    text += ", ... (" + std::to_string(ranks.size() - kMaxRanksListed) + " more)";
  return text;
}

}  // namespace

struct Store::Impl {
  struct Reply {
    Opcode opcode = Opcode::ok;
    Bytes value;
  };

  explicit Impl(const StoreOptions& options);

  // Sends one request and reads its reply; the reply must arrive by `deadline`. ERROR replies throw.
  Reply call(Opcode opcode, std::string_view key, const std::uint8_t* value, std::size_t value_len,
             const Deadline& deadline);
  // The two halves of call(), for a caller that waits for the reply in its own way (StoreWatch).
  void send_request(Opcode opcode, std::string_view key, const std::uint8_t* value, std::size_t value_len,
                    const Deadline& deadline);
  Reply read_reply(Opcode opcode, std::string_view key, const Deadline& deadline);
  // The challenge-response (store_auth.hpp); throws SecretRejected when either side's proof is wrong.
  void authenticate(const Deadline& deadline);
  [[noreturn]] void break_connection(Errc code, const std::string& why);
  void check_io(net::IoResult result, Opcode opcode, std::string_view key, const char* doing);
  void validate_key(std::string_view key) const;
  // Every key the caller names goes through here: the Impl's own functions take full keys.
  std::string prefixed(const std::string& key) const { return options.key_prefix + key; }

  void set(const std::string& key, const std::uint8_t* value, std::size_t value_len);
  // Waits for `key` until `deadline`; false when the server answered TIMEOUT.
  bool get_until(const std::string& key, const Deadline& deadline, Bytes* value);
  bool check(const std::string& key);
  std::int64_t add(const std::string& key, std::int64_t delta);
  std::size_t erase_prefix(const std::string& prefix);
  StoreStats server_stats();
  void join(const std::string& group, int rank, int world_size, const std::string& label);
  void leave(const std::string& group);
  std::size_t members_present(const std::string& group, bool* failed);
  void report_failure(const std::string& text);
  // Counts this rank out of a collective round; the last of `world_size` erases the round's keys.
  void finish_round(const std::string& prefix, int world_size);

  void validate_collective(const char* what, const std::string& name, int rank, int world_size) const;
  std::string next_round_prefix(const std::string& name, std::uint64_t* round);
  // The ranks in [first, world_size) other than `self` whose key `prefix<rank>` is not set yet.
  std::vector<int> missing_ranks(const std::string& prefix, int first, int world_size, int self);

  StoreOptions options;
  std::string endpoint;
  net::Fd fd;
  std::string broken;            // non-empty once the connection is unusable: the reason
  bool refused_for_now = false;  // the last call was refused with ERROR "limit": worth asking again later
  std::string local_ip;          // cached at connect time: still answerable after the connection broke
  std::unordered_map<std::string, std::uint64_t> rounds;  // collective name -> next round
};

Store::Impl::Impl(const StoreOptions& options_in)
    : options(options_in), endpoint(net::join_host_port(options_in.host, options_in.port)) {
  if (options.port == 0) fail(Errc::invalid_argument, "StoreOptions::port must name the store's port, not 0");
  if (options.max_message_bytes == 0)
    fail(Errc::invalid_argument, "StoreOptions::max_message_bytes must be > 0");
  Deadline deadline(options.timeout);
  // A server that refuses for now (too many connections, or this host failed HELLO too often: someone else
  // may be guessing) is asked again until the deadline; the last refusal is the error.
  auto pause = std::chrono::milliseconds(50);
  for (;;) {
    try {
      fd = net::connect_tcp(options.host, options.port, deadline, options.wait_for_server);
    } catch (const Error& error) {
      if (error.code() != Errc::timeout) throw;
      fail(Errc::timeout, "store at " + endpoint + " not reachable within " +
                              wire::describe_duration(options.timeout) + ": " + wire::bare_message(error));
    }
    local_ip = net::local_ip(fd.get());
    try {
      authenticate(deadline);
      return;
    } catch (const Error&) {
      // Too little time left for another attempt to be answered: the refusal is the better error.
      if (!refused_for_now || deadline.remaining() < pause + kMinAttempt) throw;
    }
    broken.clear();
    refused_for_now = false;
    std::this_thread::sleep_for(pause);
    pause = std::min<std::chrono::milliseconds>(pause * 2, std::chrono::seconds(1));
  }
}

void Store::Impl::break_connection(Errc code, const std::string& why) {
  broken = why;
  fd.reset();
  fail(code, why);
}

void Store::Impl::check_io(net::IoResult result, Opcode opcode, std::string_view key, const char* doing) {
  std::string request = describe_request(opcode, key);
  switch (result.status) {
    case net::IoStatus::ok:
      return;
    case net::IoStatus::closed:
      break_connection(
          Errc::peer_failure,
          "lost connection to the store at " + endpoint + " (rank 0 hosts it: did its process end?) while " +
              doing + " " + request +
              (result.error_code != 0 ? std::string(": ") + std::strerror(result.error_code) : ""));
    case net::IoStatus::timed_out:
      break_connection(Errc::timeout, "store at " + endpoint + " did not answer " + request +
                                          " in time (while " + doing + " it)");
  }
}

void Store::Impl::validate_key(std::string_view key) const {
  if (key.size() > wire::kMaxKeyBytes) {
    fail(Errc::invalid_argument, "store key " + quote(key) + " exceeds the limit of " +
                                     std::to_string(wire::kMaxKeyBytes) + " bytes");
  }
}

void Store::Impl::authenticate(const Deadline& deadline) {
  const auth::Nonce client_nonce = auth::random_nonce();
  Reply challenge = call(Opcode::hello, "", client_nonce.data(), client_nonce.size(), deadline);
  if (challenge.opcode != Opcode::challenge || challenge.value.size() != auth::kNonceBytes) {
    break_connection(Errc::protocol, "store at " + endpoint + " answered HELLO with " +
                                         std::string(wire::opcode_name(challenge.opcode)) + " of " +
                                         std::to_string(challenge.value.size()) +
                                         " bytes instead of a challenge: not a ferry store?");
  }
  auth::Nonce server_nonce{};
  std::copy(challenge.value.begin(), challenge.value.end(), server_nonce.begin());
  const crypto::Digest proof = auth::client_proof(options.secret, client_nonce, server_nonce);
  Reply accepted = call(Opcode::prove, "", proof.data(), proof.size(), deadline);
  const crypto::Digest expected = auth::server_proof(options.secret, client_nonce, server_nonce);
  const std::string_view offered(reinterpret_cast<const char*>(accepted.value.data()), accepted.value.size());
  if (accepted.opcode != Opcode::ok || !crypto::constant_time_equal(offered, crypto::view(expected))) {
    const std::string why = "store at " + endpoint +
                            " accepted this rank but could not prove it knows the job secret: it runs with "
                            "another secret (another job's store on this port?) or is not ferry's";
    broken = why;
    fd.reset();
    throw SecretRejected(why);
  }
}

Store::Impl::Reply Store::Impl::call(Opcode opcode, std::string_view key, const std::uint8_t* value,
                                     std::size_t value_len, const Deadline& deadline) {
  send_request(opcode, key, value, value_len, deadline);
  return read_reply(opcode, key, deadline);
}

void Store::Impl::send_request(Opcode opcode, std::string_view key, const std::uint8_t* value,
                               std::size_t value_len, const Deadline& deadline) {
  if (!broken.empty())
    fail(Errc::peer_failure, "store connection unusable after an earlier failure: " + broken);
  validate_key(key);
  // The limit is for the caller's values; the handshake's nonces and proofs are not theirs to limit.
  const bool handshake = opcode == Opcode::hello || opcode == Opcode::prove;
  if (!handshake && value_len > options.max_message_bytes) {
    fail(Errc::invalid_argument, "value of " + std::to_string(value_len) + " bytes for key " + quote(key) +
                                     " exceeds max_message_bytes " +
                                     std::to_string(options.max_message_bytes));
  }
  Bytes frame = wire::encode_frame(opcode, key, value, value_len);
  check_io(net::send_all(fd.get(), frame.data(), frame.size(), deadline), opcode, key, "sending");
}

Store::Impl::Reply Store::Impl::read_reply(Opcode opcode, std::string_view key, const Deadline& deadline) {
  std::uint8_t header_bytes[wire::kHeaderBytes];
  check_io(net::recv_all(fd.get(), header_bytes, sizeof(header_bytes), deadline), opcode, key,
           "waiting for the reply to");
  wire::FrameHeader header;
  try {
    // Proofs and error texts (a failure names ranks) are accepted whatever the caller's limit.
    header =
        wire::decode_header(header_bytes, std::max(options.max_message_bytes, 2 * wire::kMaxFailureBytes));
  } catch (const Error& error) {
    break_connection(Errc::protocol, "store at " + endpoint + " sent a malformed reply to " +
                                         describe_request(opcode, key) + ": " + wire::bare_message(error));
  }
  if (wire::is_request(header.opcode)) {
    break_connection(Errc::protocol,
                     "store at " + endpoint + " answered " + std::string(wire::opcode_name(opcode)) +
                         " with the request opcode " + std::string(wire::opcode_name(header.opcode)));
  }
  std::string reply_key(header.key_len, '\0');
  Reply reply{header.opcode, Bytes(static_cast<std::size_t>(header.value_len))};
  check_io(net::recv_all(fd.get(), reply_key.data(), reply_key.size(), deadline), opcode, key,
           "reading the reply to");
  check_io(net::recv_all(fd.get(), reply.value.data(), reply.value.size(), deadline), opcode, key,
           "reading the reply to");

  if (reply.opcode == Opcode::error) {
    std::string text(reply.value.begin(), reply.value.end());
    if (reply_key == wire::kErrorSecret) {
      const std::string why =
          "store at " + endpoint + " rejected the job secret (every rank must get the same FERRY_SECRET)";
      broken = why;
      fd.reset();
      throw SecretRejected(why);
    }
    if (reply_key == wire::kErrorSemantic) {
      fail(Errc::invalid_argument,
           "store at " + endpoint + " refused " + describe_request(opcode, key) + ": " + text);
    }
    // The job failed (now, by this request, or earlier): the text names the cause. The stream is intact.
    if (reply_key == wire::kErrorFailed || reply_key == wire::kErrorMember) fail(Errc::peer_failure, text);
    // Protocol and limit errors: the server closes the connection after sending them.
    refused_for_now = reply_key == wire::kErrorLimit;
    break_connection(Errc::protocol, "store at " + endpoint + " dropped this connection during " +
                                         describe_request(opcode, key) + ": " + text);
  }
  if (reply_key != key) {
    break_connection(Errc::protocol, "store at " + endpoint + " answered " + describe_request(opcode, key) +
                                         " with a reply for " + quote(reply_key));
  }
  return reply;
}

void Store::Impl::set(const std::string& key, const std::uint8_t* value, std::size_t value_len) {
  Reply reply = call(Opcode::set, key, value, value_len, Deadline(options.timeout));
  if (reply.opcode != Opcode::ok) {
    break_connection(Errc::protocol, "store at " + endpoint + " answered SET " + quote(key) + " with " +
                                         std::string(wire::opcode_name(reply.opcode)));
  }
}

bool Store::Impl::get_until(const std::string& key, const Deadline& deadline, Bytes* value) {
  // The server enforces the budget and answers TIMEOUT; the client's own deadline is a safety net past it.
  std::array<std::uint8_t, 8> budget{};
  wire::put_u64(budget.data(), static_cast<std::uint64_t>(deadline.remaining_ms()));
  Reply reply =
      call(Opcode::get, key, budget.data(), budget.size(), Deadline(deadline.remaining() + kReplyGrace));
  if (reply.opcode == Opcode::timeout) return false;
  if (reply.opcode != Opcode::value) {
    break_connection(Errc::protocol, "store at " + endpoint + " answered GET " + quote(key) + " with " +
                                         std::string(wire::opcode_name(reply.opcode)));
  }
  *value = std::move(reply.value);
  return true;
}

bool Store::Impl::check(const std::string& key) {
  Reply reply = call(Opcode::check, key, nullptr, 0, Deadline(options.timeout));
  if (reply.opcode != Opcode::value || reply.value.size() != 1) {
    break_connection(Errc::protocol,
                     "store at " + endpoint + " sent a malformed answer to CHECK " + quote(key));
  }
  return reply.value[0] != 0;
}

std::int64_t Store::Impl::add(const std::string& key, std::int64_t delta) {
  auto encoded = wire::encode_i64(delta);
  Reply reply = call(Opcode::add, key, encoded.data(), encoded.size(), Deadline(options.timeout));
  if (reply.opcode != Opcode::value || reply.value.size() != 8) {
    break_connection(Errc::protocol,
                     "store at " + endpoint + " sent a malformed answer to ADD " + quote(key));
  }
  return wire::decode_i64(reply.value.data());
}

std::size_t Store::Impl::erase_prefix(const std::string& prefix) {
  if (prefix.empty()) fail(Errc::invalid_argument, "Store::erase_prefix needs a non-empty prefix");
  Reply reply = call(Opcode::erase, prefix, nullptr, 0, Deadline(options.timeout));
  if (reply.opcode != Opcode::value || reply.value.size() != 8) {
    break_connection(Errc::protocol,
                     "store at " + endpoint + " sent a malformed answer to ERASE " + quote(prefix));
  }
  return static_cast<std::size_t>(wire::get_u64(reply.value.data()));
}

StoreStats Store::Impl::server_stats() {
  Reply reply = call(Opcode::stats, "", nullptr, 0, Deadline(options.timeout));
  if (reply.opcode != Opcode::value || reply.value.size() != 8 * wire::kStatsFields) {
    break_connection(Errc::protocol, "store at " + endpoint + " sent a malformed answer to STATS");
  }
  auto field = [&](std::size_t i) { return wire::get_u64(reply.value.data() + 8 * i); };
  StoreStats stats;
  stats.keys = field(0);
  stats.bytes = field(1);
  stats.connections = field(2);
  stats.failed_hellos = field(3);
  stats.refused_connections = field(4);
  return stats;
}

void Store::Impl::join(const std::string& group, int rank, int world_size, const std::string& label) {
  if (rank < 0 || world_size < 1 || rank >= world_size) {
    fail(Errc::invalid_argument,
         "Store::join: rank " + std::to_string(rank) + " is outside [0, " + std::to_string(world_size) + ")");
  }
  Bytes value(8);
  wire::put_u64(value.data(), static_cast<std::uint64_t>(rank) | static_cast<std::uint64_t>(world_size)
                                                                     << 32);
  value.insert(value.end(), label.begin(), label.begin() + std::min(label.size(), wire::kMaxFailureBytes));
  Reply reply = call(Opcode::join, group, value.data(), value.size(), Deadline(options.timeout));
  if (reply.opcode != Opcode::ok) {
    break_connection(Errc::protocol, "store at " + endpoint + " answered JOIN with " +
                                         std::string(wire::opcode_name(reply.opcode)));
  }
}

void Store::Impl::leave(const std::string& group) {
  Reply reply = call(Opcode::leave, group, nullptr, 0, Deadline(options.timeout));
  if (reply.opcode != Opcode::ok) {
    break_connection(Errc::protocol, "store at " + endpoint + " answered LEAVE with " +
                                         std::string(wire::opcode_name(reply.opcode)));
  }
}

std::size_t Store::Impl::members_present(const std::string& group, bool* failed) {
  Reply reply = call(Opcode::members, group, nullptr, 0, Deadline(options.timeout));
  if (reply.opcode != Opcode::value || reply.value.size() != 9) {
    break_connection(Errc::protocol, "store at " + endpoint + " sent a malformed answer to MEMBERS");
  }
  if (failed != nullptr) *failed = reply.value[8] != 0;
  return static_cast<std::size_t>(wire::get_u64(reply.value.data()));
}

void Store::Impl::report_failure(const std::string& text) {
  const std::size_t size = std::min(text.size(), wire::kMaxFailureBytes);
  Reply reply = call(Opcode::fail, "", reinterpret_cast<const std::uint8_t*>(text.data()), size,
                     Deadline(options.timeout));
  if (reply.opcode != Opcode::ok) {
    break_connection(Errc::protocol, "store at " + endpoint + " answered FAIL with " +
                                         std::string(wire::opcode_name(reply.opcode)));
  }
}

void Store::Impl::finish_round(const std::string& prefix, int world_size) {
  // Every rank adds itself only after its last read of the round, so the one that completes the count knows
  // nobody will read these keys again. The next round of the name uses fresh keys, so it cannot be hit.
  if (add(prefix + "finished", 1) == world_size) erase_prefix(prefix);
}

void Store::Impl::validate_collective(const char* what, const std::string& name, int rank,
                                      int world_size) const {
  if (name.empty()) fail(Errc::invalid_argument, std::string(what) + " needs a non-empty name");
  if (world_size < 1) {
    fail(Errc::invalid_argument, std::string(what) + " " + quote(name) + ": world_size " +
                                     std::to_string(world_size) + " must be at least 1");
  }
  if (rank < 0 || rank >= world_size) {
    fail(Errc::invalid_argument, std::string(what) + " " + quote(name) + ": rank " + std::to_string(rank) +
                                     " is outside [0, " + std::to_string(world_size) + ")");
  }
}

std::string Store::Impl::next_round_prefix(const std::string& name, std::uint64_t* round) {
  // One counter per name, shared by barrier and all_gather, so every call gets fresh keys as long as all
  // ranks make the same sequence of collective calls.
  *round = rounds[name]++;
  return name + "/" + std::to_string(*round) + "/";
}

std::vector<int> Store::Impl::missing_ranks(const std::string& prefix, int first, int world_size, int self) {
  std::vector<int> missing;
  for (int rank = first; rank < world_size; ++rank) {
    if (rank != self && !check(prefix + std::to_string(rank))) missing.push_back(rank);
  }
  return missing;
}

Store::Store(const StoreOptions& options) : impl_(std::make_unique<Impl>(options)) {}
Store::~Store() = default;

void Store::set(const std::string& key, const Bytes& value) {
  impl_->set(impl_->prefixed(key), value.data(), value.size());
}

Bytes Store::get(const std::string& key) {
  return get(key, impl_->options.timeout);
}

Bytes Store::get(const std::string& key, Duration timeout) {
  Bytes value;
  const std::string full = impl_->prefixed(key);
  if (!impl_->get_until(full, Deadline(timeout), &value)) {
    fail(Errc::timeout, "timed out after " + wire::describe_duration(timeout) + " waiting for key " +
                            quote(full) + " in the store at " + impl_->endpoint);
  }
  return value;
}

void Store::wait(const std::vector<std::string>& keys) {
  wait(keys, impl_->options.timeout);
}

void Store::wait(const std::vector<std::string>& keys_in, Duration timeout) {
  std::vector<std::string> keys;
  keys.reserve(keys_in.size());
  for (const auto& key : keys_in) keys.push_back(impl_->prefixed(key));
  Deadline deadline(timeout);
  Bytes ignored;
  for (std::size_t i = 0; i < keys.size(); ++i) {
    if (impl_->get_until(keys[i], deadline, &ignored)) continue;
    std::vector<std::string> missing{keys[i]};
    for (std::size_t j = i + 1; j < keys.size(); ++j) {
      if (!impl_->check(keys[j])) missing.push_back(keys[j]);
    }
    std::string names;
    for (std::size_t j = 0; j < missing.size() && j < kMaxRanksListed; ++j)
      names += (j ? ", " : "") + quote(missing[j]);
    if (missing.size() > kMaxRanksListed) names += ", ...";
    fail(Errc::timeout, "timed out after " + wire::describe_duration(timeout) + " waiting for " +
                            std::to_string(missing.size()) + " of " + std::to_string(keys.size()) +
                            " keys in the store at " + impl_->endpoint + ": " + names);
  }
}

std::int64_t Store::add(const std::string& key, std::int64_t delta) {
  return impl_->add(impl_->prefixed(key), delta);
}

bool Store::check(const std::string& key) {
  return impl_->check(impl_->prefixed(key));
}

std::size_t Store::erase_prefix(const std::string& prefix) {
  return impl_->erase_prefix(impl_->prefixed(prefix));
}

StoreStats Store::server_stats() {
  return impl_->server_stats();
}

void Store::join(const std::string& group, int rank, int world_size, const std::string& label) {
  impl_->join(group, rank, world_size, label);
}

void Store::leave(const std::string& group) {
  impl_->leave(group);
}

std::size_t Store::members_present(const std::string& group, bool* failed) {
  return impl_->members_present(group, failed);
}

void Store::report_failure(const std::string& text) {
  impl_->report_failure(text);
}

void Store::barrier(const std::string& name, int rank, int world_size) {
  barrier(name, rank, world_size, impl_->options.timeout);
}

void Store::barrier(const std::string& name_in, int rank, int world_size, Duration timeout) {
  impl_->validate_collective("barrier", name_in, rank, world_size);
  const std::string name = impl_->prefixed(name_in);
  Deadline deadline(timeout);
  std::uint64_t round = 0;
  const std::string prefix = impl_->next_round_prefix(name, &round);
  // Each rank marks its arrival (so a timeout can name who is missing), then counts itself in; the last one
  // to arrive publishes "done", which is the only key everyone waits for: O(world) requests in total.
  impl_->set(prefix + std::to_string(rank), nullptr, 0);
  std::int64_t arrived = impl_->add(prefix + "arrived", 1);
  if (arrived > world_size) {
    fail(Errc::invalid_argument, "barrier " + quote(name) + " round " + std::to_string(round) + ": " +
                                     std::to_string(arrived) + " arrivals for world_size " +
                                     std::to_string(world_size) +
                                     " (a rank called it twice, or ranks disagree on world_size)");
  }
  if (arrived == world_size) impl_->set(prefix + "done", nullptr, 0);
  Bytes ignored;
  if (impl_->get_until(prefix + "done", deadline, &ignored)) {
    impl_->finish_round(prefix, world_size);
    return;
  }
  std::vector<int> missing = impl_->missing_ranks(prefix, 0, world_size, rank);
  std::string who = missing.empty() ? "the last arrivals (all ranks had arrived by the time this was checked)"
                                    : "ranks " + list_ranks(missing) + " of " + std::to_string(world_size);
  fail(Errc::timeout, "barrier " + quote(name) + " round " + std::to_string(round) + " timed out after " +
                          wire::describe_duration(timeout) + " waiting for " + who);
}

std::vector<Bytes> Store::all_gather(const std::string& name, int rank, int world_size, const Bytes& mine) {
  return all_gather(name, rank, world_size, mine, impl_->options.timeout);
}

std::vector<Bytes> Store::all_gather(const std::string& name_in, int rank, int world_size, const Bytes& mine,
                                     Duration timeout) {
  impl_->validate_collective("all_gather", name_in, rank, world_size);
  const std::string name = impl_->prefixed(name_in);
  Deadline deadline(timeout);
  std::uint64_t round = 0;
  const std::string prefix = impl_->next_round_prefix(name, &round);
  impl_->set(prefix + std::to_string(rank), mine.data(), mine.size());
  std::vector<Bytes> gathered(static_cast<std::size_t>(world_size));
  gathered[static_cast<std::size_t>(rank)] = mine;
  for (int peer = 0; peer < world_size; ++peer) {
    if (peer == rank) continue;
    if (impl_->get_until(prefix + std::to_string(peer), deadline,
                         &gathered[static_cast<std::size_t>(peer)])) {
      continue;
    }
    std::vector<int> missing{peer};
    std::vector<int> later = impl_->missing_ranks(prefix, peer + 1, world_size, rank);
    missing.insert(missing.end(), later.begin(), later.end());
    fail(Errc::timeout, "all_gather " + quote(name) + " round " + std::to_string(round) +
                            " timed out after " + wire::describe_duration(timeout) + " waiting for ranks " +
                            list_ranks(missing) + " of " + std::to_string(world_size));
  }
  impl_->finish_round(prefix, world_size);
  return gathered;
}

Duration Store::timeout() const {
  return impl_->options.timeout;
}

const std::string& Store::endpoint() const {
  return impl_->endpoint;
}

std::string Store::local_address() const {
  return impl_->local_ip;
}

// ---- StoreWatch ----

struct StoreWatch::Impl {
  Impl(const StoreOptions& options, int world_size, int store_host);
  ~Impl();
  void run() noexcept;
  // Sends one request that the server parks (WATCH, or GET of a key not set yet) and waits for its answer
  // or the stop signal; nullopt when stopped.
  std::optional<Store::Impl::Reply> park(Opcode opcode, const std::string& key);
  // Follows the lost ranks of the group options.key_prefix names (wire::lost_rank_key) until stopped.
  void follow_lost_ranks();
  // Sets the rank's word, then lists it (once).
  void mark_lost(int rank);
  void set_failure(const std::string& text);

  StoreOptions options;
  int world_size = 0;
  int store_host = 0;      // the rank marked lost when the store is lost (-1: none of the group's)
  Store::Impl connection;  // the watch's own; used by its thread only once that runs
  net::Fd stop;            // eventfd: the destructor writes it
  mutable std::mutex mutex;
  mutable std::condition_variable failure_set;
  std::string failure;                    // guarded by mutex
  std::vector<int> lost_ranks;            // guarded by mutex, in the order the store counted them
  std::unique_ptr<std::uint64_t[]> lost;  // [world_size], through std::atomic_ref
  std::atomic<bool> has_failure{false};
  std::mutex report_mutex;  // one report at a time
  std::thread thread;
};

namespace {
// A WATCH asks for this long at once; when it ends without a failure, the thread asks again.
constexpr Duration kWatchBudget = std::chrono::hours(1);
}  // namespace

StoreWatch::Impl::Impl(const StoreOptions& options_in, int world_size_in, int store_host_in)
    : options(options_in),
      world_size(std::max(world_size_in, 0)),
      store_host(store_host_in < world_size ? store_host_in : -1),
      connection(options_in) {
  lost = std::make_unique<std::uint64_t[]>(static_cast<std::size_t>(world_size) + 1);
  stop = net::Fd(eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK));
  if (!stop.valid()) fail_errno("eventfd for the store watch", errno);
  thread = std::thread([this] { run(); });
}

StoreWatch::Impl::~Impl() {
  std::uint64_t one = 1;
  // An eventfd write of 8 bytes cannot be partial; without it the join below would wait for the store.
  if (::write(stop.get(), &one, sizeof(one)) != sizeof(one)) connection.fd.reset();
  if (thread.joinable()) thread.join();
}

void StoreWatch::Impl::set_failure(const std::string& text) {
  {
    std::lock_guard lock(mutex);
    if (!failure.empty()) return;
    failure = text;
    has_failure.store(true, std::memory_order_release);
  }
  failure_set.notify_all();
}

std::optional<Store::Impl::Reply> StoreWatch::Impl::park(Opcode opcode, const std::string& key) {
  std::array<std::uint8_t, 8> budget{};
  wire::put_u64(budget.data(),
                static_cast<std::uint64_t>(
                    std::chrono::duration_cast<std::chrono::milliseconds>(kWatchBudget).count()));
  connection.send_request(opcode, key, budget.data(), budget.size(), Deadline(options.timeout));
  for (;;) {
    pollfd fds[2] = {{stop.get(), POLLIN, 0}, {connection.fd.get(), POLLIN, 0}};
    int ready = ::poll(fds, 2, -1);
    if (ready < 0) {
      if (errno == EINTR) continue;
      fail_errno("poll in the store watch", errno);
    }
    if (fds[0].revents != 0) return std::nullopt;
    if (fds[1].revents == 0) continue;
    // The reply has begun to arrive (or the connection closed): read it whole, boundedly.
    return connection.read_reply(opcode, key, Deadline(options.timeout));
  }
}

void StoreWatch::Impl::follow_lost_ranks() {
  std::uint64_t index = 1;
  for (;;) {
    const std::string key = wire::lost_rank_key(options.key_prefix, index);
    const std::optional<Store::Impl::Reply> reply = park(Opcode::get, key);
    if (!reply) return;
    if (reply->opcode == Opcode::timeout) continue;
    if (reply->opcode != Opcode::value) {
      connection.break_connection(Errc::protocol, "the store answered GET '" + key + "' with " +
                                                      std::string(wire::opcode_name(reply->opcode)));
    }
    const std::string text(reply->value.begin(), reply->value.end());
    int rank = -1;
    const auto parsed = std::from_chars(text.data(), text.data() + text.size(), rank);
    if (parsed.ec != std::errc() || parsed.ptr != text.data() + text.size() || rank < 0 || rank >= world_size)
      connection.break_connection(Errc::protocol, "the store named '" + text + "' as lost rank " +
                                                      std::to_string(index) + " of a job of " +
                                                      std::to_string(world_size) + " ranks");
    mark_lost(rank);
    ++index;
  }
}

void StoreWatch::Impl::mark_lost(int rank) {
  std::atomic_ref<std::uint64_t> word(lost[static_cast<std::size_t>(rank)]);
  // The word first: whoever sees the rank in lost_ranks() finds its word set.
  if (word.exchange(1, std::memory_order_acq_rel) != 0) return;
  std::lock_guard lock(mutex);
  lost_ranks.push_back(rank);
}

void StoreWatch::Impl::run() noexcept {
  try {
    for (;;) {
      const std::optional<Store::Impl::Reply> reply = park(Opcode::watch, "");
      if (!reply) return;
      if (reply->opcode == Opcode::timeout) continue;  // ask again
      if (reply->opcode == Opcode::value) set_failure(std::string(reply->value.begin(), reply->value.end()));
      break;
    }
    // After the failure only the lost ranks are left to learn (a job that goes on without them wants them).
    if (world_size > 0) follow_lost_ranks();
  } catch (const Error& error) {
    // The store went away (its rank 0 ended or died) or broke the protocol: whoever waits for a peer must
    // not wait on, and the store cannot have told anyone anything since. The store lives in rank 0's
    // process: without it rank 0 is as good as gone (its own death closes no connection it could publish).
    // The host first: whoever hears of the failure finds it marked.
    if (world_size > 0 && store_host >= 0) mark_lost(store_host);
    set_failure("lost the job's store: " + wire::bare_message(error));
  } catch (const std::exception& error) {
    set_failure(std::string("the store watch failed: ") + error.what());
  }
}

StoreWatch::StoreWatch(const StoreOptions& options, int world_size, int store_host)
    : impl_(std::make_unique<Impl>(options, world_size, store_host)) {}
StoreWatch::~StoreWatch() = default;

const std::uint64_t* StoreWatch::lost_words() const {
  return impl_->world_size > 0 ? impl_->lost.get() : nullptr;
}

int StoreWatch::world_size() const {
  return impl_->world_size;
}

std::vector<int> StoreWatch::lost_ranks() const {
  std::lock_guard lock(impl_->mutex);
  return impl_->lost_ranks;
}

std::string StoreWatch::failure() const {
  if (!impl_->has_failure.load(std::memory_order_acquire)) return {};
  std::lock_guard lock(impl_->mutex);
  return impl_->failure;
}

std::string StoreWatch::await_failure(Duration wait) const {
  std::unique_lock lock(impl_->mutex);
  impl_->failure_set.wait_for(lock, wait, [this] { return !impl_->failure.empty(); });
  return impl_->failure;
}

void StoreWatch::check() const {
  if (!impl_->has_failure.load(std::memory_order_acquire)) return;
  fail(Errc::peer_failure, failure());
}

void StoreWatch::report(const std::string& text) noexcept {
  if (impl_->has_failure.load(std::memory_order_acquire)) return;
  std::lock_guard lock(impl_->report_mutex);
  try {
    StoreOptions options = impl_->options;
    // Short: a store that does not answer at once is gone, and the caller is on its way out with an error.
    options.timeout = std::min<Duration>(options.timeout, std::chrono::seconds(2));
    options.wait_for_server = false;
    Store::Impl reporter(options);
    reporter.report_failure(text);
  } catch (const std::exception&) {
    // Best effort: the caller reports its error itself anyway.
  }
}

}  // namespace ferry::transport
