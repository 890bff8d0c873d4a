// Dispatch and combine on an emulated cluster (`ferry launch --netns`: one network and IPC namespace per
// node), so the tokens between nodes really cross TCP.
#include "common/netns.hpp"
#include "launch_common.hpp"

TEST_CASE("netns: dispatch and combine between namespaced nodes over TCP", "[netns]") {
  SKIP_WITHOUT_NETNS();
  ferry::test::launch_and_verify("--netns --nodes 2 --ranks-per-node 2", 4);
}
