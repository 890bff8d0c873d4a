// The ucx fabric between processes of one node (shared memory and loopback), through `ferry launch`.
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
