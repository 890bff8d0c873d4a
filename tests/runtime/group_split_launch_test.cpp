// Group::split across processes through `ferry launch` (the rank side is group_split_worker.cpp): sibling
// sub-groups each run a Buffer at the same time, then the parent runs one too.
#include "group_split_launch.hpp"

TEST_CASE("split launch: 2 nodes x 2 into {0,2} and {1,3}, a Buffer on each", "[multiprocess][split]") {
  ferry::test::launch_split("--nodes 2 --ranks-per-node 2", "lanes",
                            {{"lane0", 0, 2}, {"lane1", 0, 2}, {"lane0", 1, 2}, {"lane1", 1, 2}});
}

TEST_CASE("split launch: 1 node x 4 into {0,1} and {2,3}, a Buffer on each", "[multiprocess][split]") {
  ferry::test::launch_split("--nodes 1 --ranks-per-node 4", "halves",
                            {{"half0", 0, 2}, {"half0", 1, 2}, {"half1", 0, 2}, {"half1", 1, 2}});
}
