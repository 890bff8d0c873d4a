// The ucx fabric across emulated nodes (`ferry launch --netns`: one network and IPC namespace per node),
// where inter-node traffic really crosses TCP/IP. Needs root and iproute2; elsewhere every test warns and
// passes.
#include "fabric_launch.hpp"

using fabric_test::Job;

TEST_CASE("ucx fabric over tcp: random puts, every byte checked (2 nodes x 1 rank)") {
  SKIP_WITHOUT_NETNS();
  fabric_test::expect_pass(Job{2, 1, true, "random_puts"});
}

TEST_CASE("ucx fabric over tcp: random puts, every byte checked (2 nodes x 2 ranks)") {
  SKIP_WITHOUT_NETNS();
  fabric_test::expect_pass(Job{2, 2, true, "random_puts", "ucx", 20, {"--rounds", "1"}});
}

TEST_CASE("ucx fabric over tcp: a signal is never seen before its payload (2 nodes x 1 rank)") {
  SKIP_WITHOUT_NETNS();
  fabric_test::expect_pass(Job{2, 1, true, "signal_order"});
}

TEST_CASE("ucx fabric over tcp: atomics are exact under contention (2 nodes x 2 ranks)") {
  SKIP_WITHOUT_NETNS();
  fabric_test::expect_pass(Job{2, 2, true, "atomics"});
}

TEST_CASE("ucx fabric over tcp: repeated clean shutdown (2 nodes x 1 rank)") {
  SKIP_WITHOUT_NETNS();
  fabric_test::expect_pass(Job{2, 1, true, "shutdown"});
}

TEST_CASE("ucx fabric over tcp: a peer killed mid-transfer is reported by name (2 nodes x 1 rank)") {
  SKIP_WITHOUT_NETNS();
  fabric_test::expect_peer_death_reported(Job{2, 1, true, "kill_peer", "ucx", 15});
}

TEST_CASE("ucx fabric over tcp: a peer killed mid-transfer is reported by name (2 nodes x 2 ranks)") {
  SKIP_WITHOUT_NETNS();
  fabric_test::expect_peer_death_reported(Job{2, 2, true, "kill_peer", "ucx", fabric_test::kKillTimeout});
}
