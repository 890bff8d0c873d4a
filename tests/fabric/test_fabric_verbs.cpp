// The verbs fabric between processes of one node, through `ferry launch`: where an RDMA device exists, the
// same scenarios and the same checks as the ucx fabric (fabric_launch.hpp); elsewhere every test case says
// why and exits 77, which ctest reports as skipped.
#include "common/skip.hpp"
#include "fabric_launch.hpp"
#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/fabric.hpp"

using fabric_test::Job;

namespace {

// Skips the test case unless a verbs fabric can be made here (the probe's own words say why not).
void require_verbs() {
  try {
    auto group = ferry::Group::from_job(ferry::JobEnv{});
    ferry::transport::Peers peers;
    peers.store = &group.store();
    ferry::transport::FabricOptions options;
    options.kind = ferry::transport::FabricKind::verbs;
    auto fabric = ferry::transport::make_fabric(peers, options);
    std::printf("verbs fabric: %s\n", fabric->description().c_str());
  } catch (const ferry::Error& e) {
    if (e.code() != ferry::Errc::unsupported) throw;
    ferry::test::skip(std::string("the verbs fabric cannot run here: ") + e.what());
  }
}

Job verbs_job(int ranks, const std::string& scenario, int timeout_s = 20) {
  return Job{1, ranks, false, scenario, "verbs", timeout_s};
}

}  // namespace

TEST_CASE("verbs fabric: random puts to every peer, every byte checked (1 node x 2 ranks)") {
  require_verbs();
  fabric_test::expect_pass(verbs_job(2, "random_puts"));
}

TEST_CASE("verbs fabric: a signal is never seen before its payload (1 node x 2 ranks)") {
  require_verbs();
  fabric_test::expect_pass(verbs_job(2, "signal_order"));
}

TEST_CASE("verbs fabric: atomics are exact under contention (1 node x 3 ranks)") {
  require_verbs();
  fabric_test::expect_pass(verbs_job(3, "atomics"));
}

TEST_CASE("verbs fabric: repeated clean shutdown (1 node x 2 ranks)") {
  require_verbs();
  fabric_test::expect_pass(verbs_job(2, "shutdown"));
}

// Not just any non-zero exit: the survivor must report a peer failure that names rank 1.
TEST_CASE("verbs fabric: a peer killed mid-transfer is reported by name (1 node x 2 ranks)") {
  require_verbs();
  fabric_test::expect_peer_death_reported(verbs_job(2, "kill_peer", fabric_test::kKillTimeout));
}
