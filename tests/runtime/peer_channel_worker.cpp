// peer_channel_worker MODE[,MODE...] [--seed N] [--timeout S] [--tag TEXT]
//
// One rank of a multi-process PeerChannel test; run it under `ferry launch`. Each mode builds its own channel
// over the job's group. Prints "rank R: <mode> ok" per mode and exits 0 when every check passed; prints
// "rank R: FAILED: <why>" and exits 1 otherwise. The seed defaults to FERRY_TEST_SEED or a random one and is
// always printed (rank 0's seed is used by every rank, so one number replays the job). --tag is ignored
// (tests use it to find leftovers).
//
// Modes:
//   exchange    a ring (to next, from prev) and then all pairs (self included), both directions at once, many
//               more messages than slots, random sizes 0 .. max, every byte checked
//   order       send-before-recv (sends complete into free slots without a recv; one more waits for credit)
//               and recv-before-send, between partners r and r ^ 1
//   errors      peer out of range and oversized messages throw naming them; a size mismatch fails the recv's
//               Event naming both sizes, and the next message still arrives
//   silent      (timeout 2 s) a recv from a partner that never sends, and a send beyond the slots to a
//               partner that never receives, both fail within the timeout naming the partner
//   kill_peer   rank 1 dies (SIGKILL) while every survivor has sends and recvs queued to and from it; the
//               survivors' Events fail naming rank 1
//   throughput  rank r < W/2 streams 256 KiB messages to rank r + W/2; prints MB/s (not checked)
//   idle        an idle channel costs little CPU: the process uses under 5% of a core over 1.5 s
#include <signal.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <map>
#include <random>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/peer_channel.hpp"
#include "worker_common.hpp"

namespace {

using namespace std::chrono_literals;
using Seconds = std::chrono::duration<double>;
using Clock = std::chrono::steady_clock;

struct Failure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

void check(bool ok, const std::string& what) {
  if (!ok) throw Failure(what);
}

struct Context {
  ferry::Group* group = nullptr;
  std::uint64_t seed = 0;
  int timeout_s = 30;
  int rank() const { return group->rank(); }
  int world() const { return group->world_size(); }
  ferry::PeerChannelConfig config(std::size_t max_bytes, int slots) const {
    ferry::PeerChannelConfig config;
    config.max_message_bytes = max_bytes;
    config.slots_per_peer = slots;
    config.timeout = std::chrono::seconds(timeout_s);
    return config;
  }
};

std::uint64_t mix(std::uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

// Deterministic content of message `index` from `src` to `dst`: what the sender writes and the receiver
// expects.
std::uint64_t message_key(std::uint64_t seed, int src, int dst, std::uint64_t index, std::uint64_t phase) {
  return mix(seed ^ mix(std::uint64_t(src) * 0x9e3779b97f4a7c15ULL + std::uint64_t(dst)) ^
             mix(index * 0xc2b2ae3d27d4eb4fULL + phase));
}

void fill(std::vector<std::byte>& bytes, std::uint64_t key) {
  std::uint64_t x = key;
  for (std::size_t i = 0; i < bytes.size(); ++i) {
    if (i % 8 == 0) x = mix(x + 0x165667b19e3779f9ULL);
    bytes[i] = std::byte(x >> (8 * (i % 8)));
  }
}

// Size of a random message: mostly log-uniform in [1, max], sometimes 0 or exactly max.
std::size_t random_size(std::uint64_t key, std::size_t max) {
  std::uint64_t x = mix(key ^ 0x5bd1e995);
  if (x % 16 == 0) return 0;
  if (x % 16 == 1) return max;
  double exponent = double((x >> 8) % 65536) / 65536.0 * std::log2(double(max));
  return std::min<std::size_t>(max, std::size_t(std::exp2(exponent)));
}

void expect_bytes(const std::vector<std::byte>& got, std::uint64_t key, const std::string& what) {
  std::vector<std::byte> want(got.size());
  fill(want, key);
  if (got == want) return;
  std::size_t at = 0;
  while (got[at] == want[at]) ++at;
  throw Failure(what + ": byte " + std::to_string(at) + " of " + std::to_string(got.size()) + " is " +
                std::to_string(int(got[at])) + ", expected " + std::to_string(int(want[at])));
}

// Waits for `event` and returns the ferry::Error it failed with; throws when it succeeded.
ferry::Error expect_failure(const ferry::Event& event, const std::string& what) {
  try {
    event.wait();
  } catch (const ferry::Error& e) {
    return e;
  }
  throw Failure(what + ": the Event succeeded, expected it to fail");
}

// Calls `call` and returns the ferry::Error it threw; fails unless it threw one with `code`.
ferry::Error expect_throw(const std::function<void()>& call, ferry::Errc code, const std::string& what) {
  try {
    call();
  } catch (const ferry::Error& e) {
    check(e.code() == code, what + ": threw the wrong category: " + e.what());
    return e;
  }
  throw Failure(what + ": did not throw");
}

void expect_in(const std::string& text, const std::string& needle, const std::string& what) {
  check(text.find(needle) != std::string::npos, what + ": '" + needle + "' not in: " + text);
}

struct Message {
  int peer = 0;
  std::uint64_t key = 0;
  std::vector<std::byte> bytes;
  ferry::Event event;
};

// ---- exchange --------------------------------------------------------------------------------------------

void exchange(const Context& context) {
  const int rank = context.rank();
  const int world = context.world();
  constexpr std::size_t kMax = std::size_t{64} << 10;
  constexpr int kSlots = 4;
  ferry::PeerChannel channel(*context.group, context.config(kMax, kSlots));
  std::uint64_t messages_out = 0, bytes_out = 0, messages_in = 0, bytes_in = 0;

  auto make_send = [&](int dst, std::uint64_t index, std::uint64_t phase) {
    Message message;
    message.peer = dst;
    message.key = message_key(context.seed, rank, dst, index, phase);
    message.bytes.resize(random_size(message.key, kMax));
    fill(message.bytes, message.key);
    ++messages_out;
    bytes_out += message.bytes.size();
    return message;
  };
  auto make_recv = [&](int src, std::uint64_t index, std::uint64_t phase) {
    Message message;
    message.peer = src;
    message.key = message_key(context.seed, src, rank, index, phase);
    message.bytes.resize(random_size(message.key, kMax));
    ++messages_in;
    bytes_in += message.bytes.size();
    return message;
  };
  auto check_all = [&](std::vector<Message>& sends, std::vector<Message>& recvs, const char* phase) {
    for (std::size_t i = 0; i < sends.size(); ++i) sends[i].event.wait();
    for (std::size_t i = 0; i < recvs.size(); ++i) {
      recvs[i].event.wait();
      expect_bytes(recvs[i].bytes, recvs[i].key,
                   std::string(phase) + " message " + std::to_string(i) + " from rank " +
                       std::to_string(recvs[i].peer));
    }
  };

  // Ring: every send is issued (most wait for credit) before the first recv, on every rank at once.
  {
    constexpr int kMessages = 200;
    const int next = (rank + 1) % world;
    const int prev = (rank + world - 1) % world;
    std::vector<Message> sends, recvs;
    sends.reserve(kMessages);
    recvs.reserve(kMessages);
    for (int i = 0; i < kMessages; ++i) sends.push_back(make_send(next, i, 1));
    for (int i = 0; i < kMessages; ++i) recvs.push_back(make_recv(prev, i, 1));
    auto start = Clock::now();
    for (auto& m : sends) m.event = channel.send(m.peer, m.bytes);
    for (auto& m : recvs) m.event = channel.recv(m.peer, m.bytes);
    check_all(sends, recvs, "ring");
    std::printf("rank %d: ring: %d messages to rank %d and from rank %d in %.2f s\n", rank, kMessages, next,
                prev, Seconds(Clock::now() - start).count());
  }
  // All pairs, self included: sends and recvs interleaved per peer.
  {
    constexpr int kMessages = 48;
    std::vector<Message> sends, recvs;
    sends.reserve(std::size_t(kMessages) * world);
    recvs.reserve(std::size_t(kMessages) * world);
    for (int i = 0; i < kMessages; ++i) {
      for (int peer = 0; peer < world; ++peer) {
        sends.push_back(make_send(peer, i, 2));
        recvs.push_back(make_recv(peer, i, 2));
      }
    }
    auto start = Clock::now();
    for (std::size_t i = 0; i < sends.size(); ++i) {
      sends[i].event = channel.send(sends[i].peer, sends[i].bytes);
      recvs[i].event = channel.recv(recvs[i].peer, recvs[i].bytes);
    }
    check_all(sends, recvs, "all-pairs");
    std::printf("rank %d: all pairs: %d messages to and from each of %d ranks in %.2f s\n", rank, kMessages,
                world, Seconds(Clock::now() - start).count());
  }
  auto stats = channel.stats();
  check(stats.messages_sent == messages_out && stats.bytes_sent == bytes_out,
        "stats count " + std::to_string(stats.messages_sent) + " messages / " +
            std::to_string(stats.bytes_sent) + " bytes sent, expected " + std::to_string(messages_out) +
            " / " + std::to_string(bytes_out));
  check(stats.messages_received == messages_in && stats.bytes_received == bytes_in,
        "stats count " + std::to_string(stats.messages_received) + " messages / " +
            std::to_string(stats.bytes_received) + " bytes received, expected " +
            std::to_string(messages_in) + " / " + std::to_string(bytes_in));
}

// ---- order -----------------------------------------------------------------------------------------------

int partner_of(const Context& context) {
  check(context.world() % 2 == 0, "this mode pairs rank r with r ^ 1 and needs an even world size");
  return context.rank() ^ 1;
}

void order(const Context& context) {
  const int rank = context.rank();
  const int partner = partner_of(context);
  constexpr int kSlots = 4;
  constexpr std::size_t kBytes = 3000;
  ferry::PeerChannel channel(*context.group, context.config(std::size_t{16} << 10, kSlots));
  auto message = [&](int src, int dst, int index, int phase) {
    std::vector<std::byte> bytes(kBytes + std::size_t(index));
    fill(bytes, message_key(context.seed, src, dst, index, phase));
    return bytes;
  };

  for (int sender_parity = 0; sender_parity < 2; ++sender_parity) {
    const bool sender = (rank & 1) == sender_parity;
    const int phase = 10 + sender_parity;
    // Send before recv: S sends complete with no recv posted (they sit in the receiver's slots); one more
    // waits for credit until the receiver starts receiving.
    std::vector<std::vector<std::byte>> out, in;
    std::vector<ferry::Event> sent, got;
    if (sender) {
      for (int i = 0; i <= kSlots; ++i) out.push_back(message(rank, partner, i, phase));
      for (int i = 0; i <= kSlots; ++i) sent.push_back(channel.send(partner, out[i]));
      for (int i = 0; i < kSlots; ++i) sent[i].wait();
      std::this_thread::sleep_for(300ms);
      check(!sent[kSlots].test(), "send-before-recv: send #" + std::to_string(kSlots) +
                                      " completed although all slots were full and no recv was posted");
    }
    context.group->barrier("peer_channel_worker/order/sent");
    if (!sender) {
      for (int i = 0; i <= kSlots; ++i) in.push_back(std::vector<std::byte>(kBytes + std::size_t(i)));
      for (int i = 0; i <= kSlots; ++i) got.push_back(channel.recv(partner, in[i]));
      for (int i = 0; i <= kSlots; ++i) {
        got[i].wait();
        expect_bytes(in[i], message_key(context.seed, partner, rank, i, phase),
                     "send-before-recv message " + std::to_string(i));
      }
    } else {
      sent[kSlots].wait();
    }
    context.group->barrier("peer_channel_worker/order/received");

    // Recv before send: the recvs wait (their Events pending) until the partner sends, later.
    out.clear();
    in.clear();
    sent.clear();
    got.clear();
    const int recv_phase = phase + 10;
    constexpr int kMessages = 2 * kSlots + 1;
    if (!sender) {
      for (int i = 0; i < kMessages; ++i) in.push_back(std::vector<std::byte>(kBytes + std::size_t(i)));
      for (int i = 0; i < kMessages; ++i) got.push_back(channel.recv(partner, in[i]));
    }
    context.group->barrier("peer_channel_worker/order/posted");
    if (sender) {
      std::this_thread::sleep_for(200ms);
      for (int i = 0; i < kMessages; ++i) out.push_back(message(rank, partner, i, recv_phase));
      for (int i = 0; i < kMessages; ++i) sent.push_back(channel.send(partner, out[i]));
      for (auto& event : sent) event.wait();
    } else {
      std::this_thread::sleep_for(100ms);
      check(!got[0].test(), "recv-before-send: recv #0 completed before anything was sent");
      for (int i = 0; i < kMessages; ++i) {
        got[i].wait();
        expect_bytes(in[i], message_key(context.seed, partner, rank, i, recv_phase),
                     "recv-before-send message " + std::to_string(i));
      }
    }
    context.group->barrier("peer_channel_worker/order/done");
  }
}

// ---- errors ----------------------------------------------------------------------------------------------

void errors(const Context& context) {
  const int rank = context.rank();
  const int world = context.world();
  const int partner = partner_of(context);
  constexpr std::size_t kMax = 4096;
  ferry::PeerChannel channel(*context.group, context.config(kMax, 4));
  std::vector<std::byte> small(16), big(kMax + 1);

  auto e = expect_throw([&] { channel.send(-1, small); }, ferry::Errc::invalid_argument, "send to rank -1");
  expect_in(e.what(), "peer -1", "send to rank -1");
  e = expect_throw([&] { channel.send(world, small); }, ferry::Errc::invalid_argument, "send to rank W");
  expect_in(e.what(), "peer " + std::to_string(world), "send to rank W");
  e = expect_throw([&] { channel.recv(world, small); }, ferry::Errc::invalid_argument, "recv from rank W");
  expect_in(e.what(), "peer " + std::to_string(world), "recv from rank W");
  e = expect_throw([&] { channel.send(partner, big); }, ferry::Errc::invalid_argument, "oversized send");
  expect_in(e.what(), std::to_string(kMax + 1), "oversized send");
  expect_in(e.what(), std::to_string(kMax), "oversized send");
  e = expect_throw([&] { channel.recv(partner, big); }, ferry::Errc::invalid_argument, "oversized recv");
  expect_in(e.what(), std::to_string(kMax + 1), "oversized recv");

  // Size mismatch: the partner sends 1000 bytes, we receive into 999 (and into 1001 for the next one); the
  // one after that, received with the right size, must still arrive intact.
  std::vector<std::byte> m1(1000), m2(1000), m3(500);
  fill(m1, message_key(context.seed, rank, partner, 0, 30));
  fill(m2, message_key(context.seed, rank, partner, 1, 30));
  fill(m3, message_key(context.seed, rank, partner, 2, 30));
  ferry::Event s1 = channel.send(partner, m1), s2 = channel.send(partner, m2), s3 = channel.send(partner, m3);
  std::vector<std::byte> r1(999), r2(1001), r3(500);
  ferry::Event g1 = channel.recv(partner, r1), g2 = channel.recv(partner, r2), g3 = channel.recv(partner, r3);
  e = expect_failure(g1, "recv of 1000 bytes into 999");
  check(e.code() == ferry::Errc::invalid_argument, std::string("size mismatch category: ") + e.what());
  expect_in(e.what(), "1000", "size mismatch");
  expect_in(e.what(), "999", "size mismatch");
  expect_in(e.what(), "rank " + std::to_string(partner), "size mismatch");
  e = expect_failure(g2, "recv of 1000 bytes into 1001");
  expect_in(e.what(), "1001", "size mismatch");
  g3.wait();
  expect_bytes(r3, message_key(context.seed, partner, rank, 2, 30), "the message after two mismatches");
  s1.wait();
  s2.wait();
  s3.wait();
  auto stats = channel.stats();
  check(stats.messages_received == 1, "stats count " + std::to_string(stats.messages_received) +
                                          " received messages; failed recvs must not count");
  std::printf("rank %d: size mismatch reported: %s\n", rank, e.what());
}

// ---- silent ----------------------------------------------------------------------------------------------

void silent(const Context& context) {
  const int rank = context.rank();
  const int partner = partner_of(context);
  constexpr int kSlots = 2;
  constexpr double kTimeout = 2.0;
  auto config = context.config(1024, kSlots);
  config.timeout = std::chrono::milliseconds(int(kTimeout * 1000));
  ferry::PeerChannel channel(*context.group, config);
  std::vector<std::byte> bytes(100);
  auto expect_in_time = [&](const ferry::Event& event, Clock::time_point start, const std::string& what) {
    auto e = expect_failure(event, what);
    double took = Seconds(Clock::now() - start).count();
    check(e.code() == ferry::Errc::timeout, what + ": expected a timeout, got " + e.what());
    expect_in(e.what(), "rank " + std::to_string(partner), what);
    // Not early; late only by what a loaded machine adds (the default timeout, 100 s, would be far past).
    check(took > kTimeout * 0.9 && took < kTimeout + 10.0, what + ": failed after " + std::to_string(took) +
                                                               " s with a " + std::to_string(kTimeout) +
                                                               " s timeout");
    std::printf("rank %d: %s failed after %.2f s: %s\n", rank, what.c_str(), took, e.what());
  };

  // Even ranks wait for a message their (alive, progressing) partner never sends.
  if (rank % 2 == 0) {
    auto start = Clock::now();
    expect_in_time(channel.recv(partner, bytes), start, "recv from a silent peer");
  }
  context.group->barrier("peer_channel_worker/silent/recv");
  // Odd ranks fill the partner's slots; the partner never receives, so the next send cannot get a slot.
  if (rank % 2 == 1) {
    std::vector<ferry::Event> sent;
    for (int i = 0; i < kSlots; ++i) sent.push_back(channel.send(partner, bytes));
    for (auto& event : sent) event.wait();
    auto start = Clock::now();
    expect_in_time(channel.send(partner, bytes), start, "send to a peer that never receives");
  }
  context.group->barrier("peer_channel_worker/silent/send");
}

// ---- kill_peer -------------------------------------------------------------------------------------------

void kill_peer(const Context& context) {
  const int rank = context.rank();
  const int world = context.world();
  constexpr int kVictim = 1;
  check(world >= 2, "kill_peer needs at least 2 ranks");
  // `ferry launch` stops the other ranks (SIGTERM, then SIGKILL after its grace period) as soon as the victim
  // dies; survivors ignore SIGTERM so that they live long enough to show how the channel reports the death.
  if (rank != kVictim) signal(SIGTERM, SIG_IGN);
  constexpr std::size_t kBytes = std::size_t{64} << 10;
  constexpr int kMessages = 2000;  // far more than get through before the victim dies
  constexpr int kBeforeDeath = 16;
  ferry::PeerChannel channel(*context.group, context.config(kBytes, 4));
  std::vector<std::byte> out(kBytes);
  std::vector<std::byte> in(kBytes);  // written by one thread in order; only sizes matter here

  if (rank == kVictim) {
    // The victim dies with the survivors mid-stream (their queues to and from it full), but lets its own
    // writes and credit returns drain first: on tcp, UCX 1.13 emulates RMA with active messages whose target
    // replies, and a survivor that handles a request after its sender died aborts inside UCX
    // (ucp_put_handler / ucp_atomic_req_handler: "Fatal: unexpected error: Endpoint timeout"), a transport
    // limitation outside the channel.
    std::vector<ferry::Event> events;
    for (int peer = 0; peer < world; ++peer) {
      if (peer == rank) continue;
      for (int i = 0; i < kBeforeDeath; ++i) {
        events.push_back(channel.send(peer, out));
        events.push_back(channel.recv(peer, in));
      }
    }
    for (auto& event : events) event.wait();
    std::this_thread::sleep_for(500ms);
    std::printf("rank %d: dying now, mid-stream\n", rank);
    std::fflush(stdout);
    raise(SIGKILL);
  }
  std::vector<ferry::Event> events;
  for (int i = 0; i < kMessages; ++i) {
    events.push_back(channel.send(kVictim, out));
    events.push_back(channel.recv(kVictim, in));
  }
  auto start = Clock::now();
  int succeeded = 0;
  for (auto& event : events) {
    try {
      event.wait();
      ++succeeded;
    } catch (const ferry::Error& e) {
      double took = Seconds(Clock::now() - start).count();
      std::string what = e.what();
      expect_in(what, "rank 1", "the survivor's error");
      check(e.code() == ferry::Errc::peer_failure || e.code() == ferry::Errc::timeout,
            "expected a peer failure, got " + what);
      check(took < context.timeout_s + 5.0, "the death was reported after " + std::to_string(took) + " s");
      std::printf("rank %d: kill_peer ok: error after %d completed operations and %.1f s: %s\n", rank,
                  succeeded, took, what.c_str());
      std::fflush(stdout);
      return;
    }
  }
  throw Failure("no error although rank 1 died");
}

// ---- throughput ------------------------------------------------------------------------------------------

void throughput(const Context& context) {
  const int rank = context.rank();
  const int world = context.world();
  check(world % 2 == 0, "throughput pairs rank r with r + W/2 and needs an even world size");
  constexpr std::size_t kBytes = std::size_t{256} << 10;
  constexpr int kMessages = 1024;  // 256 MiB
  constexpr int kWarmup = 16;
  const int half = world / 2;
  const bool sender = rank < half;
  const int partner = sender ? rank + half : rank - half;
  ferry::PeerChannel channel(*context.group, context.config(kBytes, 8));
  std::vector<std::byte> buffer(kBytes);
  fill(buffer, message_key(context.seed, sender ? rank : partner, sender ? partner : rank, 0, 40));
  std::vector<std::byte> copy = buffer;

  auto round = [&](int messages) {
    std::vector<ferry::Event> events;
    events.reserve(std::size_t(messages));
    // Every message reads from (or lands in) the same buffer: only the channel thread touches it meanwhile.
    for (int i = 0; i < messages; ++i)
      events.push_back(sender ? channel.send(partner, buffer) : channel.recv(partner, buffer));
    for (auto& event : events) event.wait();
  };
  round(kWarmup);
  context.group->barrier("peer_channel_worker/throughput/start");
  auto start = Clock::now();
  round(kMessages);
  double seconds = Seconds(Clock::now() - start).count();
  if (!sender) {
    check(buffer == copy, "the last 256 KiB message arrived corrupted");
    std::printf(
        "rank %d: throughput from rank %d: %.0f MB/s (%d messages of 256 KiB in %.3f s, receiver side)\n",
        rank, partner, double(kMessages) * kBytes / seconds / 1e6, kMessages, seconds);
  }
  context.group->barrier("peer_channel_worker/throughput/done");
}

// ---- idle ------------------------------------------------------------------------------------------------

double cpu_seconds() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return double(usage.ru_utime.tv_sec + usage.ru_stime.tv_sec) +
         double(usage.ru_utime.tv_usec + usage.ru_stime.tv_usec) / 1e6;
}

// CPU share of this whole process (every thread) over `span`.
double cpu_share(std::chrono::milliseconds span) {
  double before = cpu_seconds();
  auto start = Clock::now();
  std::this_thread::sleep_for(span);
  return (cpu_seconds() - before) / Seconds(Clock::now() - start).count();
}

void idle(const Context& context) {
  const int rank = context.rank();
  const int partner = (rank + 1) % context.world();
  const int from = (rank + context.world() - 1) % context.world();
  double baseline = cpu_share(1000ms);  // the group alone (rank 0 also serves the store)
  context.group->barrier("peer_channel_worker/idle/baseline");
  ferry::PeerChannel channel(*context.group, context.config(4096, 4));
  std::vector<std::byte> out(4096), in(4096);
  ferry::Event sent =
      channel.send(partner, out);  // `out` must outlive the send (it is freed before the channel)
  channel.recv(from, in).wait();
  sent.wait();
  context.group->barrier("peer_channel_worker/idle/start");
  double share = cpu_share(1500ms);
  std::printf("rank %d: idle channel: %.2f%% of a core for the whole process (%.2f%% before the channel)\n",
              rank, share * 100, baseline * 100);
  check(share < 0.05, "an idle channel used " + std::to_string(share * 100) + "% of a core");
  context.group->barrier("peer_channel_worker/idle/done");
}

const std::map<std::string, void (*)(const Context&)>& modes() {
  static const std::map<std::string, void (*)(const Context&)> table{
      {"exchange", exchange},   {"order", order},           {"errors", errors}, {"silent", silent},
      {"kill_peer", kill_peer}, {"throughput", throughput}, {"idle", idle},
  };
  return table;
}

[[noreturn]] void usage(const std::string& why) {
  std::fprintf(stderr,
               "peer_channel_worker: %s\nusage: peer_channel_worker MODE[,MODE...] [--seed N] "
               "[--timeout S] [--tag TEXT]\nmodes:",
               why.c_str());
  for (const auto& [name, _] : modes()) std::fprintf(stderr, " %s", name.c_str());
  std::fprintf(stderr, "\n");
  std::exit(2);
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) usage("no mode");
  std::vector<std::string> chosen;
  for (std::string list = argv[1]; !list.empty();) {
    auto comma = list.find(',');
    std::string mode = list.substr(0, comma);
    if (modes().count(mode) == 0) usage("unknown mode " + mode);
    chosen.push_back(mode);
    list = comma == std::string::npos ? "" : list.substr(comma + 1);
  }
  Context context;
  const auto options = worker_common::read_options(argc, argv, 2, {"--seed", "--timeout", "--tag"},
                                                   [](const std::string& why) { usage(why); });
  if (options.count("--timeout")) context.timeout_s = std::atoi(options.at("--timeout").c_str());
  context.seed = worker_common::chosen_seed(options);

  int rank = -1;
  try {
    ferry::GroupOptions group_options;
    group_options.timeout = std::chrono::seconds(context.timeout_s);
    auto group = ferry::Group::from_env(group_options);
    rank = group.rank();
    context.group = &group;
    context.seed = worker_common::agree_on_seed(group, "peer_channel_worker", argv[1], context.seed);
    for (const auto& mode : chosen) {
      modes().at(mode)(context);
      worker_common::report_ok(rank, mode);
    }
    return 0;
  } catch (const std::exception& e) {
    return worker_common::report_failure(rank, e);
  }
}
