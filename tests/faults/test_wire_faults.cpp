// Faults on the wire: `ferry launch --netns --drop-rate P` drops packets on every node's link (nftables in
// the node's own namespace), and dispatch and combine between the nodes still give exactly the reference's
// results, only later (TCP, under the store and UCX, retransmits what was lost).
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <string>

#include "../dispatch/reference.hpp"
#include "../peer/launch_run.hpp"
#include "common/netns.hpp"

TEST_CASE("wire faults: dispatch and combine stay exact with 1% of the packets between nodes dropped",
          "[faults][netns]") {
  SKIP_WITHOUT_NETNS();
  const unsigned long long seed = ferry::test::test_seed();
  std::printf("wire faults: seed %llu (set FERRY_TEST_SEED to repeat)\n", seed);
  const auto start = std::chrono::steady_clock::now();
  auto outcome =
      ferry::test::run(std::string(FERRY_BIN) +
                       " launch --netns --nodes 2 --ranks-per-node 2 --drop-rate 0.01 --timeout 180 -- " +
                       DISPATCH_RANK_BIN + " --seed " + std::to_string(seed) + " --rounds 20");
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  CHECK(outcome.exit_code == 0);
  for (int rank = 0; rank < 4; ++rank) {
    CHECK_THAT(outcome.output, Catch::Contains("rank " + std::to_string(rank) + ": verified 20 rounds"));
  }
  // "ferry launch: --drop-rate 0.01: dropped D of N packets on the node links (x%)"
  const auto at = outcome.output.find("dropped ");
  REQUIRE(at != std::string::npos);
  double dropped = -1, sent = -1;
  REQUIRE(std::sscanf(outcome.output.c_str() + at, "dropped %lf of %lf packets", &dropped, &sent) == 2);
  std::printf("wire faults: %.0f of %.0f packets dropped, job done in %.1f s\n", dropped, sent, seconds);
  CHECK(dropped > 0);  // faults were injected (about 1% of some thousands of packets)...
  CHECK(dropped < 0.05 * sent);
}
