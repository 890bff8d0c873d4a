// In-process fabric tests: backend selection, bookkeeping, argument checks, and the ucx backend on one rank
// and on two ranks run as threads of this process.
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <cstring>
#include <future>
#include <optional>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "common/loopback.hpp"
#include "common/scoped_env.hpp"
#include "common/skip.hpp"
#include "common/thread_check.hpp"
#include "fabric/fabric_common.hpp"
#include "fabric/ucx_fabric.hpp"
#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/fabric.hpp"
#include "ferry/transport/store.hpp"

using namespace std::chrono_literals;
using ferry::Errc;
using ferry::transport::FabricKind;
using ferry::transport::MemoryKind;

namespace {

// A single-rank job with its own store, the way a process without a launcher sees itself.
struct SoloJob {
  ferry::Group group = ferry::Group::from_job(ferry::JobEnv{});
  ferry::transport::Peers peers() {
    ferry::transport::Peers peers;
    peers.store = &group.store();
    peers.timeout = 10s;
    return peers;
  }
};

using ferry::test::expect;  // rank threads throw, the main thread reports (common/thread_check.hpp)

// Runs body(group, peers) on `world` ranks of one node, one thread each; a rank that threw fails the test.
template <typename Body>
void run_ranks(int world, Body body) {
  auto port = ferry::test::free_loopback_port();
  std::vector<std::future<void>> ranks;
  for (int r = 0; r < world; ++r) {
    ranks.push_back(std::async(std::launch::async, [=] {
      ferry::JobEnv job;
      job.launcher = ferry::Launcher::ferry;
      job.rank = r;
      job.world_size = world;
      job.local_rank = r;
      job.local_size = world;
      job.store_port = port;
      job.secret = "fabric-unit";
      job.job_id = "fabric-unit";
      ferry::GroupOptions options;
      options.timeout = 20s;
      auto group = ferry::Group::from_job(job, options);
      ferry::transport::Peers peers;
      peers.store = &group.store();
      peers.rank = r;
      peers.world_size = world;
      peers.local_rank = r;
      peers.local_size = world;
      peers.timeout = 20s;
      body(group, peers);
    }));
  }
  for (auto& rank : ranks) REQUIRE_NOTHROW(rank.get());  // a rank's failed check, reported here
}

}  // namespace

TEST_CASE("fabric kinds parse, print and come from FERRY_FABRIC") {
  using ferry::transport::parse_fabric_kind;
  CHECK(parse_fabric_kind("ucx") == FabricKind::ucx);
  CHECK(parse_fabric_kind("verbs") == FabricKind::verbs);
  CHECK(parse_fabric_kind("noop") == FabricKind::noop);
  CHECK(parse_fabric_kind("inproc") == FabricKind::inproc);
  CHECK(std::string(to_string(FabricKind::inproc)) == "inproc");
  CHECK(std::string(to_string(FabricKind::verbs)) == "verbs");
  CHECK_THROWS_WITH(parse_fabric_kind("nccl"), Catch::Contains("unknown fabric 'nccl'"));

  ferry::test::ScopedEnv fabric("FERRY_FABRIC", "noop");
  CHECK(ferry::transport::fabric_kind_from_env() == FabricKind::noop);
  fabric.set("inproc");
  CHECK(ferry::transport::fabric_kind_from_env() == FabricKind::inproc);
  fabric.set("tcp");
  CHECK_THROWS_WITH(ferry::transport::fabric_kind_from_env(), Catch::Contains("FERRY_FABRIC='tcp'"));
  fabric.set(nullptr);
  auto expected = ferry::transport::detail::rdma_device_present() ? FabricKind::verbs : FabricKind::ucx;
  CHECK(ferry::transport::fabric_kind_from_env() == expected);
}

TEST_CASE("the ticket ledger completes in order even when operations finish out of order") {
  ferry::transport::detail::TicketLedger ledger;
  CHECK(ledger.completed() == 0);
  CHECK(ledger.all_done());
  auto a = ledger.issue(), b = ledger.issue(), c = ledger.issue();
  CHECK((a == 1 && b == 2 && c == 3));
  ledger.finish(c);
  CHECK(ledger.completed() == 0);
  ledger.finish(a);
  CHECK(ledger.completed() == 1);
  CHECK_FALSE(ledger.all_done());
  ledger.finish(b);
  CHECK(ledger.completed() == 3);
  CHECK(ledger.all_done());
  CHECK_THROWS_AS(ledger.finish(b), ferry::Error);
}

TEST_CASE("descriptor blobs round-trip and reject truncation by name") {
  ferry::transport::detail::BlobWriter writer;
  writer.u32(7);
  writer.u64(0x0123456789abcdefULL);
  writer.bytes("key", 3);
  auto blob = writer.take();
  ferry::transport::detail::BlobReader reader(blob, "descriptors of rank 5");
  CHECK(reader.u32() == 7);
  CHECK(reader.u64() == 0x0123456789abcdefULL);
  CHECK(reader.bytes() == ferry::transport::Bytes{'k', 'e', 'y'});
  CHECK_NOTHROW(reader.expect_end());

  blob.resize(blob.size() - 1);
  ferry::transport::detail::BlobReader short_reader(blob, "descriptors of rank 5");
  short_reader.u32();
  short_reader.u64();
  CHECK_THROWS_WITH(short_reader.bytes(), Catch::Contains("descriptors of rank 5: truncated"));
}

TEST_CASE("the verbs fabric says why it cannot run on a machine without an RDMA device") {
  if (ferry::transport::detail::rdma_device_present()) {
    ferry::test::skip("an RDMA device exists here; the verbs fabric is covered by test_fabric_verbs");
  }
  SoloJob job;
  ferry::transport::FabricOptions options;
  options.kind = FabricKind::verbs;
  try {
    ferry::transport::make_fabric(job.peers(), options);
    FAIL("make_fabric(verbs) succeeded without a device");
  } catch (const ferry::Error& e) {
    CHECK(e.code() == Errc::unsupported);
    CHECK_THAT(e.what(), Catch::Contains("no RDMA device"));
  }
}

TEST_CASE("the verbs fabric refuses isolate_peer_failures by name") {
  SoloJob job;
  ferry::transport::FabricOptions options;
  options.kind = FabricKind::verbs;
  options.isolate_peer_failures = true;
  try {
    ferry::transport::make_fabric(job.peers(), options);
    FAIL("make_fabric(verbs, isolate_peer_failures) succeeded");
  } catch (const ferry::Error& e) {
    CHECK(e.code() == Errc::unsupported);
    CHECK_THAT(e.what(), Catch::Contains("isolate_peer_failures") && Catch::Contains("verbs"));
  }
}

TEST_CASE("the noop fabric checks arguments and completes everything at once") {
  SoloJob job;
  ferry::transport::FabricOptions options;
  options.kind = FabricKind::noop;
  auto fabric = ferry::transport::make_fabric(job.peers(), options);
  auto region = fabric->register_region(nullptr, 4096, MemoryKind::host);
  CHECK_THROWS_WITH(fabric->put(0, region, 0, region, 0, 8), Catch::Contains("before connect()"));
  fabric->connect();
  CHECK(fabric->put(0, region, 0, region, 0, 4096) == 1);
  CHECK(fabric->put_signal(0, region, 0, region, 0, 16, region, 64, 1) == 2);
  CHECK(fabric->completed() == 2);
  CHECK_THROWS_WITH(fabric->put(0, region, 0, region, 1, 4096),
                    Catch::Contains("exceeds region 0 of rank 0"));
  CHECK_THROWS_WITH(fabric->put(1, region, 0, region, 0, 8), Catch::Contains("peer rank 1 is outside"));
  CHECK_THROWS_WITH(fabric->atomic_add(0, region, 4, 1), Catch::Contains("not 8-byte aligned"));
}

TEST_CASE("the inproc fabric moves bytes and signals between threads of one process") {
  run_ranks(2, [](ferry::Group&, ferry::transport::Peers& peers) {
    ferry::transport::FabricOptions options;
    options.kind = FabricKind::inproc;
    auto fabric = ferry::transport::make_fabric(peers, options);
    expect(fabric->kind() == FabricKind::inproc, "kind");
    const auto send = fabric->register_region(nullptr, 4096, MemoryKind::host);
    const auto receive = fabric->register_region(nullptr, 4096, MemoryKind::host);
    const auto words = fabric->register_region(nullptr, 64, MemoryKind::host);
    fabric->connect();
    const int peer = 1 - peers.rank;
    auto* out = static_cast<std::uint8_t*>(fabric->region_base(send));
    for (int i = 0; i < 4096; ++i) out[i] = static_cast<std::uint8_t>(i * 3 + peers.rank);
    expect(fabric->put(peer, send, 0, receive, 0, 1000) == 1, "first ticket");
    expect(fabric->put_signal(peer, send, 1000, receive, 1000, 3096, words, 8, 1) == 2, "second ticket");
    expect(fabric->atomic_add(peer, words, 16, 5) == 3, "third ticket");
    expect(fabric->completed() == 3, "operations complete at once");
    expect(fabric->fetch_add(peer, words, 24, 7) == 0, "fetch_add returns the old value");
    auto* word = static_cast<std::uint64_t*>(fabric->region_base(words));
    ferry::Deadline deadline(20s);
    ferry::Backoff backoff;
    while (std::atomic_ref<std::uint64_t>(word[1]).load(std::memory_order_acquire) < 1) {
      expect(!deadline.expired(), "rank " + std::to_string(peers.rank) + ": no signal within 20 s");
      backoff.pause();
    }
    const auto* in = static_cast<const std::uint8_t*>(fabric->region_base(receive));
    int i = 0;
    while (i < 4096 && in[i] == static_cast<std::uint8_t>(i * 3 + peer)) ++i;
    expect(i == 4096, "byte " + std::to_string(i) + " differs");
    ferry::transport::fabric_barrier(*fabric, peers, "unit/inproc");
    expect(std::atomic_ref<std::uint64_t>(word[2]).load() == 5, "atomic_add");
    expect(std::atomic_ref<std::uint64_t>(word[3]).load() == 7, "fetch_add");
    try {  // the checks of a real fabric
      fabric->put(peer, send, 0, receive, 1, 4096);
      expect(false, "a put past the region's end was accepted");
    } catch (const ferry::Error& e) {
      expect(
          std::string(e.what()).find("exceeds region 1 of rank " + std::to_string(peer)) != std::string::npos,
          e.what());
    }
  });
}

TEST_CASE("ucx fabric: a FERRY_UCX_BATCH that is neither 0 nor 1 is refused by name") {
  SoloJob job;
  ferry::test::ScopedEnv batch("FERRY_UCX_BATCH", "yes");
  CHECK_THROWS_WITH(ferry::transport::make_fabric(job.peers(), {}),
                    Catch::Contains("FERRY_UCX_BATCH=yes: expected 0") && Catch::Contains("or 1"));
}

TEST_CASE("ucx fabric on one rank: puts, signals and atomics to itself") {
  SoloJob job;
  auto fabric = ferry::transport::make_fabric(job.peers(), {});
  CHECK(fabric->kind() == FabricKind::ucx);
  std::vector<std::uint8_t> source(1 << 16);
  for (std::size_t i = 0; i < source.size(); ++i) source[i] = static_cast<std::uint8_t>(i * 7 + 1);
  auto send = fabric->register_region(source.data(), source.size(), MemoryKind::host);
  auto receive = fabric->register_region(nullptr, 1 << 16, MemoryKind::host);
  auto words = fabric->register_region(nullptr, 64, MemoryKind::host);
  CHECK_THROWS_WITH(fabric->flush(), Catch::Contains("before connect()"));
  fabric->connect();
  CHECK_THROWS_WITH(fabric->register_region(nullptr, 64, MemoryKind::host),
                    Catch::Contains("after connect()"));
  INFO(fabric->description());

  auto* received = static_cast<std::uint8_t*>(fabric->region_base(receive));
  auto* word = static_cast<std::uint64_t*>(fabric->region_base(words));
  CHECK(received[0] == 0);  // fabric allocations start zeroed
  auto first = fabric->put(0, send, 100, receive, 200, 1000);
  auto second = fabric->put_signal(0, send, 0, receive, 4096, 50000, words, 8, 5);
  CHECK(second == first + 1);
  CHECK(fabric->atomic_add(0, words, 16, 3) == second + 1);
  fabric->flush();
  CHECK(fabric->completed() == second + 1);
  CHECK(std::memcmp(received + 200, source.data() + 100, 1000) == 0);
  CHECK(std::memcmp(received + 4096, source.data(), 50000) == 0);
  CHECK(received[199] == 0);
  CHECK(received[1200] == 0);
  CHECK(word[1] == 5);
  CHECK(word[2] == 3);
  CHECK(fabric->fetch_add(0, words, 16, 10) == 3);
  CHECK(word[2] == 13);

  CHECK_THROWS_WITH(fabric->put(0, send, 0, receive, (1 << 16) - 10, 11),
                    Catch::Contains("remote range [65526, +11) exceeds region 1 of rank 0 (65536 bytes)"));
  CHECK_THROWS_WITH(fabric->put(0, send, 1 << 16, receive, 0, 1), Catch::Contains("local range"));
  CHECK_THROWS_WITH(fabric->put(0, 7, 0, receive, 0, 1), Catch::Contains("no local region 7"));
  CHECK_THROWS_WITH(fabric->fetch_add(0, words, 12, 1), Catch::Contains("not 8-byte aligned"));
  // Argument errors do not break the fabric.
  fabric->put(0, send, 0, receive, 0, 8);
  fabric->flush();
}

// Debian's UCX (what scripts/setup installs) is built without CUDA: GPU memory is refused by name, not handed
// to ucp_mem_map as host memory. A UCX built with CUDA (HPC-X, say) registers GPU memory: nothing to refuse.
TEST_CASE("ucx fabric without CUDA support refuses GPU memory by name") {
  SoloJob job;
  auto fabric = ferry::transport::make_fabric(job.peers(), {});
  REQUIRE(fabric->kind() == FabricKind::ucx);
  if (dynamic_cast<const ferry::transport::UcxFabric&>(*fabric).cuda_memory_supported()) {
    ferry::test::skip(
        "this UCX (" + fabric->description() +
        ") is built with CUDA support: it registers GPU memory, so there is no refusal to check");
  }
  std::vector<std::uint8_t> memory(4096);
  CHECK_THROWS_WITH(fabric->register_region(memory.data(), memory.size(), MemoryKind::cuda),
                    Catch::Contains("no CUDA support") && Catch::Contains("verbs"));
}

TEST_CASE("ucx fabric between two ranks in one process: put_signal pairs payload and signal") {
  run_ranks(2, [](ferry::Group&, ferry::transport::Peers& peers) {
    ferry::transport::FabricOptions options;
    options.max_in_flight = 4;  // exercise the in-flight bound
    auto fabric = ferry::transport::make_fabric(peers, options);
    auto send = fabric->register_region(nullptr, 1 << 20, MemoryKind::host);
    auto receive = fabric->register_region(nullptr, 1 << 20, MemoryKind::host);
    auto words = fabric->register_region(nullptr, 64, MemoryKind::host);
    fabric->connect();
    int peer = 1 - peers.rank;
    auto* out = static_cast<std::uint8_t*>(fabric->region_base(send));
    for (int i = 0; i < (1 << 20); ++i) out[i] = static_cast<std::uint8_t>(i ^ (peers.rank * 0x5a));
    for (int round = 0; round < 16; ++round) {
      fabric->put(peer, send, 0, receive, 0, 1 << 19);
    }
    fabric->put_signal(peer, send, 1 << 19, receive, 1 << 19, 1 << 19, words, 0, 1);
    auto* in = static_cast<std::uint8_t*>(fabric->region_base(receive));
    auto* word = static_cast<std::uint64_t*>(fabric->region_base(words));
    ferry::Deadline deadline(20s);
    ferry::Backoff backoff;
    while (std::atomic_ref<std::uint64_t>(word[0]).load(std::memory_order_acquire) < 1) {
      if (!fabric->progress()) backoff.pause();
      expect(!deadline.expired(), "rank " + std::to_string(peers.rank) + ": no signal within 20 s");
    }
    // The signalled half is complete as soon as the signal is seen; the rest once both ranks have flushed.
    auto check_bytes = [&](int from, int to, const char* when) {
      int i = from;
      while (i < to && in[i] == static_cast<std::uint8_t>(i ^ (peer * 0x5a))) ++i;
      expect(i == to,
             "rank " + std::to_string(peers.rank) + ": byte " + std::to_string(i) + " differs " + when);
    };
    check_bytes(1 << 19, 1 << 20, "when the signal arrived");
    fabric->flush();
    ferry::transport::fabric_barrier(*fabric, peers, "unit/two-ranks");
    check_bytes(0, 1 << 19, "after the flush");
  });
}

TEST_CASE("ucx fabric: ranks that register different region counts fail connect() by name") {
  // What each rank's connect() threw, checked on this thread once both ranks are done.
  std::vector<std::optional<Errc>> codes(2);
  std::vector<std::string> messages(2);
  run_ranks(2, [&](ferry::Group&, ferry::transport::Peers& peers) {
    auto fabric = ferry::transport::make_fabric(peers, {});
    fabric->register_region(nullptr, 64, MemoryKind::host);
    if (peers.rank == 1) fabric->register_region(nullptr, 64, MemoryKind::host);
    try {
      fabric->connect();
    } catch (const ferry::Error& e) {
      codes[peers.rank] = e.code();
      messages[peers.rank] = e.what();
    }
  });
  for (int rank = 0; rank < 2; ++rank) {
    INFO("rank " << rank << ": " << messages[rank]);
    REQUIRE(codes[rank].has_value());
    CHECK(*codes[rank] == Errc::invalid_argument);
    CHECK_THAT(messages[rank], Catch::Contains("registered 2 regions but rank 0 registered 1") ||
                                   Catch::Contains("registered 1 regions but rank 1 registered 2"));
  }
}
