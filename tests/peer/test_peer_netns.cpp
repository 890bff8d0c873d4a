// The peer tests on an emulated cluster (`ferry launch --netns`: one network and IPC namespace per node):
// POSIX shm still joins the ranks of a node, and the proxy + ucx fabric crosses real TCP between the nodes.
#include <catch2/catch.hpp>
#include <string>

#include "common/netns.hpp"
#include "ferry/transport/peer_memory.hpp"
#include "launch_run.hpp"

using Catch::Matchers::Contains;
using ferry::test::read_job_id;
using ferry::test::run;
using ferry::test::temp_path;

namespace {
const std::string kLaunch = std::string(FERRY_BIN) + " launch --netns";
const std::string kRank = PEER_RANK_BIN;
}  // namespace

TEST_CASE("netns: shm peer memory joins the ranks of each node", "[netns][shm]") {
  SKIP_WITHOUT_NETNS();
  const std::string info = temp_path("netns-shm-job");
  auto outcome =
      run(kLaunch + " --nodes 2 --ranks-per-node 2 --timeout 120 -- " + kRank + " shm --info-file " + info);
  CHECK(outcome.exit_code == 0);
  for (int rank = 0; rank < 4; ++rank) {
    CHECK_THAT(outcome.output, Contains("rank " + std::to_string(rank) + ": verified"));
  }
  const std::string job_id = read_job_id(info);
  REQUIRE_FALSE(job_id.empty());
  CHECK(ferry::transport::list_shm_segments(job_id).empty());
  std::remove(info.c_str());
}

TEST_CASE("netns: proxy + ucx fabric across nodes, every byte checked", "[netns][proxy]") {
  SKIP_WITHOUT_NETNS();
  auto outcome = run(kLaunch + " --nodes 2 --ranks-per-node 2 --timeout 180 -- " + kRank +
                     " proxy --fabric ucx --block-bytes 131072 --max-bytes 6000");
  CHECK(outcome.exit_code == 0);
  for (int rank = 0; rank < 4; ++rank) {
    CHECK_THAT(outcome.output, Contains("rank " + std::to_string(rank) + ": verified"));
  }
}
