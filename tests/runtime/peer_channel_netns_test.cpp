// PeerChannel across emulated nodes (`ferry launch --netns`: one network and IPC namespace per node), where
// inter-node messages really cross TCP/IP. Needs root and iproute2; elsewhere every test is reported skipped.
#include "peer_channel_launch.hpp"

using peer_channel_test::Job;

TEST_CASE(
    "peer channel over tcp: exchange, order, errors, silent peer, throughput, idle CPU (2 nodes x 2 ranks)") {
  SKIP_WITHOUT_NETNS();
  peer_channel_test::expect_pass(Job{2, 2, true, "exchange,order,errors,silent,throughput,idle"});
}

TEST_CASE("peer channel over tcp: a peer killed mid-stream is reported by name (2 nodes x 2 ranks)") {
  SKIP_WITHOUT_NETNS();
  peer_channel_test::expect_peer_death_reported(Job{2, 2, true, "kill_peer", 10});
}
