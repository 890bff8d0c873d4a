// Fuzzes what the store server makes of one client's byte stream: the stream arrives in chunks (as from a
// socket), scan_request finds each frame, handle_request applies it to a table, and each reply is encoded and
// decoded again as the client reads it. The server's own loop (store_server.cpp) does exactly this plus the
// I/O. Anything but a clean reply or a named refusal is a bug: a crash, a sanitizer report, a reply that does
// not decode, or a table whose accounting drifts.
//
// Input: byte 0 bit 0 = the connection starts authenticated (so the fuzzer also reaches the requests behind
// the handshake without having to find it), bit 1 = it starts joined as rank 0 of a world of 2 (so closing it
// fails the job), byte 1 = chunk size - 1, then the stream. The server's nonce is all zeros, so a seed can
// carry a valid proof (fuzz/make_seeds.py computes it).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "bootstrap/store_protocol.hpp"
#include "bootstrap/store_table.hpp"
#include "fuzz_check.hpp"

namespace {

using namespace ferry::transport;
using wire::Opcode;

constexpr std::string_view kSecret = "fuzz-secret";
constexpr std::size_t kMaxValueBytes = 1 << 16;

// The reply as the server would send it, read back as the client would: header, then key and value.
void check_reply_decodes(const RequestOutcome& outcome, std::string_view key) {
  const std::string_view reply_key = outcome.opcode == Opcode::error ? outcome.error_kind : key;
  const Bytes& value = outcome.value();
  Bytes frame = outcome.opcode == Opcode::error
                    ? wire::encode_frame(Opcode::error, reply_key, outcome.text)
                    : wire::encode_frame(outcome.opcode, reply_key, value.data(), value.size());
  const wire::FrameHeader header = wire::decode_header(frame.data(), kMaxValueBytes + 1024);
  FUZZ_CHECK(header.opcode == outcome.opcode);
  FUZZ_CHECK(!wire::is_request(header.opcode));
  FUZZ_CHECK(header.frame_bytes() == frame.size());
  FUZZ_CHECK(std::string_view(reinterpret_cast<const char*>(frame.data() + wire::kHeaderBytes),
                              header.key_len) == reply_key);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 2) return 0;
  ConnectionState connection;
  if ((data[0] & 1) != 0) connection.stage = wire::AuthStage::done;
  StoreTable table;
  Membership members;
  if ((data[0] & 2) != 0) FUZZ_CHECK(members.join("", 0, 2, "fuzz", connection.seat).empty());
  const std::size_t chunk = std::size_t{data[1]} + 1;
  data += 2;
  size -= 2;

  Bytes in;
  std::size_t start = 0, fed = 0;
  bool open = true;
  while (open) {
    for (;;) {
      const std::size_t available = in.size() - start;
      const wire::RequestScan scan =
          wire::scan_request(in.data() + start, available, kMaxValueBytes, connection.stage);
      if (scan.status == wire::RequestScan::Status::need_more) break;
      if (scan.status == wire::RequestScan::Status::rejected) {
        FUZZ_CHECK(!scan.reason.empty());
        open = false;  // the server drops the connection
        break;
      }
      FUZZ_CHECK(scan.header.frame_bytes() <= available);
      FUZZ_CHECK(connection.authenticated() || scan.header.opcode == Opcode::hello ||
                 scan.header.opcode == Opcode::prove);
      const std::uint8_t* frame = in.data() + start;
      const std::string_view key(reinterpret_cast<const char*>(frame + wire::kHeaderBytes),
                                 scan.header.key_len);
      StoreStats stats;
      stats.keys = table.keys();
      stats.bytes = table.bytes();
      const wire::AuthStage before = connection.stage;
      const RequestOutcome outcome = handle_request(table, members, kSecret, connection, scan.header, key,
                                                    frame + wire::kHeaderBytes + scan.header.key_len, stats);
      // Authentication only moves forward, one step per request, and only a correct proof finishes it.
      FUZZ_CHECK(connection.stage >= before);
      if (before != wire::AuthStage::done && connection.authenticated())
        FUZZ_CHECK(scan.header.opcode == Opcode::prove && outcome.opcode == Opcode::ok);
      if (outcome.job_failed) FUZZ_CHECK(members.failed());
      if (outcome.action == RequestOutcome::Action::drop) {
        FUZZ_CHECK(!outcome.text.empty());
        FUZZ_CHECK(!outcome.error_kind.empty());
        open = false;
        break;
      }
      if (outcome.action == RequestOutcome::Action::reply) check_reply_decodes(outcome, key);
      // A parked GET would wait for its key; the stream goes on as if it had timed out.
      start += scan.header.frame_bytes();
    }
    if (!open || fed == size) break;
    const std::size_t take = std::min(chunk, size - fed);
    in.insert(in.end(), data + fed, data + fed + take);
    fed += take;
  }
  // The connection closes: a member that had not left fails the job, with a text.
  const bool was_failed = members.failed();
  const auto loss = members.lost(connection.seat, "the fuzzed connection closed");
  if (loss.job_failed) FUZZ_CHECK(!was_failed);
  if (loss.job_failed) FUZZ_CHECK(loss.counted && loss.index >= 1);
  FUZZ_CHECK(!connection.seat.joined);
  FUZZ_CHECK(members.failure().size() <= wire::kMaxFailureBytes);
  // Whatever happened, erasing everything brings the accounting back to zero.
  table.erase_prefix("");
  FUZZ_CHECK(table.keys() == 0);
  FUZZ_CHECK(table.bytes() == 0);
  return 0;
}
