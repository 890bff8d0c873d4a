// Dispatch and combine across processes through `ferry launch` (the rank side is dispatch_rank_main.cpp): shm
// peer memory inside a node, the proxy and the fabric between nodes, every result checked on its rank.
#include "common/skip.hpp"
#include "launch_common.hpp"

TEST_CASE("dispatch and combine across 2 nodes x 2 processes", "[multiprocess]") {
  ferry::test::launch_and_verify("--nodes 2 --ranks-per-node 2", 4);
}

TEST_CASE("dispatch and combine across 3 processes of one node", "[multiprocess]") {
  ferry::test::launch_and_verify("--nodes 1 --ranks-per-node 3", 3);
}

// `mpirun -np 3 ...` on one box with nothing exported by hand: rank 0 binds the store at a port of its choice
// and hands it over with the secret (JobEnv::port_handoff). It used to need MASTER_ADDR and MASTER_PORT.
TEST_CASE("dispatch and combine under mpirun on one box, without MASTER_ADDR or MASTER_PORT",
          "[multiprocess]") {
  if (ferry::test::run("command -v mpirun").exit_code != 0)
    ferry::test::skip("mpirun (Open MPI) is not installed");
  const ferry::test::Outcome outcome = ferry::test::run(
      "env -u MASTER_ADDR -u MASTER_PORT -u FERRY_STORE -u FERRY_SECRET timeout 120 mpirun "
      "--allow-run-as-root --oversubscribe -np 3 " +
      std::string(DISPATCH_RANK_BIN) + " --seed 11 --rounds 2");
  CHECK(outcome.exit_code == 0);
  for (int rank = 0; rank < 3; ++rank) {
    CHECK_THAT(outcome.output,
               Catch::Matchers::Contains("rank " + std::to_string(rank) + ": verified 2 rounds"));
  }
}

// A rank killed or frozen during a dispatch, in every launcher mode: test_rank_death.cpp.
