// Dispatch and combine across processes through `ferry launch` (the rank side is dispatch_rank_main.cpp): shm
// peer memory inside a node, the proxy and the fabric between nodes, every result checked on its rank.
#include "launch_common.hpp"

TEST_CASE("dispatch and combine across 2 nodes x 2 processes", "[multiprocess]") {
  ferry::test::launch_and_verify("--nodes 2 --ranks-per-node 2", 4);
}

TEST_CASE("dispatch and combine across 3 processes of one node", "[multiprocess]") {
  ferry::test::launch_and_verify("--nodes 1 --ranks-per-node 3", 3);
}
