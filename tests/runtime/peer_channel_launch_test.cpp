// PeerChannel between processes through `ferry launch`: one node (shared memory) and two emulated nodes on
// this machine without network namespaces (inter-node traffic on tcp over loopback).
#include "peer_channel_launch.hpp"

using peer_channel_test::Job;

TEST_CASE(
    "peer channel: ring and all-pairs exchange, every byte checked, and throughput (1 node x 2 ranks)") {
  peer_channel_test::expect_pass(Job{1, 2, false, "exchange,throughput"});
}

TEST_CASE("peer channel: send-before-recv and recv-before-send (1 node x 2 ranks)") {
  peer_channel_test::expect_pass(Job{1, 2, false, "order"});
}

TEST_CASE("peer channel: bad input and size mismatches are reported with the sizes (1 node x 2 ranks)") {
  peer_channel_test::expect_pass(Job{1, 2, false, "errors"});
}

TEST_CASE("peer channel: a silent peer fails the Event within the timeout, naming it (1 node x 2 ranks)") {
  peer_channel_test::expect_pass(Job{1, 2, false, "silent"});
}

TEST_CASE("peer channel: an idle channel costs almost no CPU (1 node x 2 ranks)") {
  peer_channel_test::expect_pass(Job{1, 2, false, "idle"});
}

TEST_CASE("peer channel: a peer killed mid-stream is reported by name (1 node x 2 ranks)") {
  peer_channel_test::expect_peer_death_reported(Job{1, 2, false, "kill_peer", 10});
}

TEST_CASE("peer channel: exchange, order, errors, silent peer, throughput (2 nodes x 2 ranks)") {
  peer_channel_test::expect_pass(Job{2, 2, false, "exchange,order,errors,silent,throughput"});
}

TEST_CASE("peer channel: a peer killed mid-stream is reported by name (2 nodes x 2 ranks)") {
  peer_channel_test::expect_peer_death_reported(Job{2, 2, false, "kill_peer", 10});
}
