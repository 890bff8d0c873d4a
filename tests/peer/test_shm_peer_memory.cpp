// shm peer memory with ranks as threads of this process: every rank sees every local peer's bytes, nothing is
// left in /dev/shm, names are sanitized, and bad arguments fail with messages that name them.
#include <fcntl.h>
#include <sys/mman.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "common/seed.hpp"
#include "common/thread_check.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/peer_memory.hpp"
#include "rank_threads.hpp"

using namespace std::chrono_literals;
using namespace ferry::transport;
using Catch::Matchers::Contains;
using ferry::Errc;
using ferry::test::expect;
using ferry::test::peers_of;
using ferry::test::run_ranks;
using ferry::test::unique_job_id;

namespace {


// Runs `call`, returning the message of the ferry::Error it throws ("" when it does not throw).
template <typename Call>
std::string error_of(Call call, Errc* code = nullptr) {
  try {
    call();
  } catch (const ferry::Error& e) {
    if (code != nullptr) *code = e.code();
    return e.what();
  }
  return "";
}

std::uint8_t pattern_byte(std::uint64_t seed, int rank, std::size_t i) {
  std::uint64_t x = seed ^ (static_cast<std::uint64_t>(rank) << 48) ^ (i * 0x9e3779b97f4a7c15ull);
  x ^= x >> 29;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 32;
  return static_cast<std::uint8_t>(x);
}

}  // namespace

TEST_CASE("shm peer memory: every local rank reads every peer's pattern", "[unit][shm]") {
  const std::uint64_t seed = ferry::test::announce_seed("shm pattern");
  INFO("seed " << seed);
  const std::string job = unique_job_id("shm-pattern");
  const std::size_t bytes = (1 << 20) + 13;  // not a page multiple
  std::atomic<int> verified{0};
  // Two nodes of three local ranks: each node's ranks map only their own node's segments.
  REQUIRE_NOTHROW(run_ranks(6, 3, job, [&](ferry::Group& group) {
    auto peers = peers_of(group, 20s);
    auto memory = make_shm_peer_memory(peers, bytes);
    expect(memory->bytes() == bytes, "bytes()");
    expect(memory->kind() == MemoryKind::host, "kind()");
    expect(memory->peer(peers.local_rank) == memory->local(), "peer(own local rank) is local()");
    auto* own = static_cast<std::uint8_t*>(memory->local());
    for (std::size_t i = 0; i < bytes; ++i) {
      if (own[i] != 0) expect(false, "fresh memory is not zero at byte " + std::to_string(i));
    }
    for (std::size_t i = 0; i < bytes; ++i) own[i] = pattern_byte(seed, group.rank(), i);
    group.barrier("written");
    for (int local = 0; local < peers.local_size; ++local) {
      const int owner = peers.rank_of(peers.node(), local);
      const auto* theirs = static_cast<const std::uint8_t*>(memory->peer(local));
      for (std::size_t i = 0; i < bytes; ++i) {
        if (theirs[i] != pattern_byte(seed, owner, i)) {
          expect(false, "rank " + std::to_string(group.rank()) + " reads byte " + std::to_string(i) +
                            " of rank " + std::to_string(owner) + " wrong");
        }
      }
    }
    group.barrier("verified");
    // Writes through a peer's mapping land in the peer's own view.
    const int right = (peers.local_rank + 1) % peers.local_size;
    static_cast<std::uint8_t*>(memory->peer(right))[bytes - 1 - static_cast<std::size_t>(peers.local_rank)] =
        0xA5;
    group.barrier("poked");
    const int left = (peers.local_rank + peers.local_size - 1) % peers.local_size;
    expect(own[bytes - 1 - static_cast<std::size_t>(left)] == 0xA5, "the left neighbour's write is visible");
    // The segments were unlinked during set-up, while still mapped.
    expect(list_shm_segments(job).empty(), "no segment of the job is left in /dev/shm");
    ++verified;
    group.barrier("done");
  }));
  CHECK(verified == 6);
  CHECK(list_shm_segments(job).empty());
}

TEST_CASE("shm peer memory: several tags coexist in one job", "[unit][shm]") {
  const std::string job = unique_job_id("shm-tags");
  REQUIRE_NOTHROW(run_ranks(2, 2, job, [&](ferry::Group& group) {
    auto peers = peers_of(group, 20s);
    auto first = make_shm_peer_memory(peers, 4096, "first");
    auto second = make_shm_peer_memory(peers, 8192, "second");
    auto again = make_shm_peer_memory(peers, 4096, "first");  // a tag can be reused once set-up finished
    static_cast<int*>(first->local())[0] = 100 + group.rank();
    static_cast<int*>(second->local())[0] = 200 + group.rank();
    static_cast<int*>(again->local())[0] = 300 + group.rank();
    group.barrier("written");
    for (int peer = 0; peer < 2; ++peer) {
      expect(static_cast<int*>(first->peer(peer))[0] == 100 + peer, "first region");
      expect(static_cast<int*>(second->peer(peer))[0] == 200 + peer, "second region");
      expect(static_cast<int*>(again->peer(peer))[0] == 300 + peer, "third region");
    }
    group.barrier("read");
  }));
  CHECK(list_shm_segments(job).empty());
}

TEST_CASE("shm peer memory: names are sanitized and unambiguous", "[unit][shm]") {
  CHECK(shm_segment_name("job-1/x y", 2, 3, "ring.a") == "/ferry-job_1_x_y-2-3-ring.a");
  CHECK(shm_segment_prefix("ferry-123-ab") == "ferry-ferry_123_ab-");
  CHECK_THAT(error_of([] { shm_segment_prefix(""); }), Contains("job id is empty"));
  CHECK_THAT(error_of([] { shm_segment_prefix(std::string(101, 'j')); }), Contains("longer than 100"));
  CHECK_THAT(error_of([] { shm_segment_name("job", 0, 0, ""); }), Contains("tag is empty"));
}

TEST_CASE("shm peer memory: bad arguments are rejected with a message naming them", "[unit][shm]") {
  const std::string job = unique_job_id("shm-args");
  std::vector<std::string> messages(2);
  SECTION("zero bytes") {
    run_ranks(1, 1, job, [&](ferry::Group& group) {
      messages[0] = error_of([&] { make_shm_peer_memory(peers_of(group, 5s), 0); });
    });
    CHECK_THAT(messages[0], Contains("bytes is 0"));
  }
  SECTION("sizes that differ between local ranks") {
    run_ranks(2, 2, job, [&](ferry::Group& group) {
      messages[static_cast<std::size_t>(group.rank())] =
          error_of([&] { make_shm_peer_memory(peers_of(group, 5s), 4096 * (1 + group.rank())); });
    });
    for (const auto& message : messages) {
      CHECK_THAT(message, Contains("asked for") && Contains("every local rank must ask for the same"));
    }
  }
  SECTION("a peer index out of range") {
    run_ranks(2, 2, job, [&](ferry::Group& group) {
      auto memory = make_shm_peer_memory(peers_of(group, 5s), 4096);
      if (group.rank() == 0) {
        messages[0] = error_of([&] { memory->peer(2); });
        messages[1] = error_of([&] { memory->peer(-1); });
      }
      group.barrier("checked");
    });
    CHECK_THAT(messages[0], Contains("local rank 2 is outside the node's 2 ranks"));
    CHECK_THAT(messages[1], Contains("local rank -1"));
  }
  CHECK(list_shm_segments(job).empty());
}

TEST_CASE("shm peer memory: a missing local rank times out and leaves nothing behind", "[unit][shm]") {
  const std::string job = unique_job_id("shm-missing");
  Errc code = Errc::internal;
  std::string message;
  run_ranks(1, 1, job, [&](ferry::Group& group) {
    auto peers = peers_of(group, 300ms);
    peers.local_size = 2;  // pretend a second local rank exists; it never arrives
    peers.world_size = 2;
    message = error_of([&] { make_shm_peer_memory(peers, 4096); }, &code);
  });
  CHECK(code == Errc::timeout);
  CHECK_FALSE(message.empty());
  CHECK(list_shm_segments(job).empty());
}

TEST_CASE("shm peer memory: an existing segment is reported and left alone", "[unit][shm]") {
  const std::string job = unique_job_id("shm-exists");
  const std::string name = shm_segment_name(job, 0, 0, "peer");
  int fd = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  REQUIRE(fd >= 0);
  close(fd);
  std::string message;
  run_ranks(1, 1, job, [&](ferry::Group& group) {
    message = error_of([&] { make_shm_peer_memory(peers_of(group, 5s), 4096); });
  });
  CHECK_THAT(message, Contains("already exists"));
  // Not ours to remove: the failed set-up must not unlink someone else's segment.
  CHECK(list_shm_segments(job).size() == 1);
  CHECK(remove_shm_segments(job).size() == 1);
  CHECK(list_shm_segments(job).empty());
}
