// The ucx fabric between processes of one node (shared memory and loopback), through `ferry launch`.
#include "common/scoped_env.hpp"
#include "fabric_launch.hpp"

using fabric_test::Job;

TEST_CASE("ucx fabric: random puts to every peer, every byte checked (1 node x 2 ranks)") {
  fabric_test::expect_pass(Job{1, 2, false, "random_puts"});
}

TEST_CASE("ucx fabric: random puts to every peer, every byte checked (1 node x 3 ranks)") {
  fabric_test::expect_pass(Job{1, 3, false, "random_puts", "ucx", 20, {"--rounds", "2"}});
}

TEST_CASE("ucx fabric: a signal is never seen before its payload (1 node x 2 ranks)") {
  fabric_test::expect_pass(Job{1, 2, false, "signal_order"});
}

TEST_CASE("ucx fabric: atomics are exact under contention (1 node x 3 ranks)") {
  fabric_test::expect_pass(Job{1, 3, false, "atomics"});
}

TEST_CASE("ucx fabric: repeated clean shutdown (1 node x 2 ranks)") {
  fabric_test::expect_pass(Job{1, 2, false, "shutdown"});
}

TEST_CASE("ucx fabric: a peer killed mid-transfer is reported by name (1 node x 2 ranks)") {
  fabric_test::expect_peer_death_reported(Job{1, 2, false, "kill_peer", "ucx", fabric_test::kKillTimeout});
}

// With isolate_peer_failures a dead peer is given up alone: the survivors (on other emulated nodes, so the
// endpoint error path of UCX) go on with each other, and operations to the dead one never hang.
TEST_CASE("ucx fabric: a dead peer is isolated, the others go on (3 nodes x 1 rank)") {
  const Job job{3, 1, false, "isolate_peer", "ucx", 10};
  const auto tag = fabric_test::unique_tag();
  const auto result = fabric_test::run(job, tag);
  INFO(result.describe());
  CHECK(result.out.find("rank 1: dying now") != std::string::npos);
  CHECK(result.out.find("rank 0: isolate_peer ok") != std::string::npos);
  CHECK(result.out.find("rank 2: isolate_peer ok") != std::string::npos);
  CHECK(result.out.find("FAILED") == std::string::npos);
  CHECK(result.seconds < job.worker_timeout_s + 10);
  CHECK(fabric_test::processes_with(tag).empty());
}

// Between emulated nodes UCX runs over tcp, where puts below 128 KiB and signals travel as write batches
// (ucx_write_batch.hpp); FERRY_UCX_BATCH=0 sends each as its own UCX operation. Both must deliver every byte
// (pieces of 1 B .. 1 MiB: batched, split over several batches, and direct) and keep signals behind payloads.
TEST_CASE("ucx fabric between emulated nodes, write batches on and off: every byte, signals in order") {
  for (const char* batching : {"1", "0"}) {
    INFO("FERRY_UCX_BATCH=" << batching);
    ferry::test::ScopedEnv env("FERRY_UCX_BATCH", batching);
    const Job puts{2, 1, false, "random_puts"};
    const auto tag = fabric_test::unique_tag();
    const auto result = fabric_test::run(puts, tag);
    INFO(result.describe());
    CHECK(result.exit_code == 0);
    CHECK(result.out.find("rank 1: random_puts ok") != std::string::npos);
    // The fabric says what it did: tcp between the nodes, batched unless turned off.
    CHECK(result.out.find(": tcp/") != std::string::npos);
    CHECK((result.out.find("(writes batched)") != std::string::npos) == (std::string(batching) == "1"));
    CHECK(fabric_test::processes_with(tag).empty());
    fabric_test::expect_pass(Job{2, 1, false, "signal_order"});
  }
}
