// Group::split on an emulated cluster (`ferry launch --netns`: one network and IPC namespace per node): the
// sub-groups reach rank 0's store across namespaces and their Buffers cross real TCP between the nodes.
#include "common/netns.hpp"
#include "group_split_launch.hpp"

TEST_CASE("netns split launch: 2 nodes x 2 into {0,2} and {1,3}, a Buffer on each", "[netns][split]") {
  SKIP_WITHOUT_NETNS();
  ferry::test::launch_split("--netns --nodes 2 --ranks-per-node 2", "lanes",
                            {{"lane0", 0, 2}, {"lane1", 0, 2}, {"lane0", 1, 2}, {"lane1", 1, 2}});
}
