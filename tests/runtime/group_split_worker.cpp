// One rank of the multi-process Group::split tests, started by `ferry launch` (group_split_launch_test.cpp).
//
//   ferry_group_split_worker --split lanes|halves [--seed N]
//
// lanes: the ranks sharing a local rank ({0,2} and {1,3} on 2 nodes x 2), one sub-group per local rank.
// halves: the first and the second half of the ranks ({0,1} and {2,3} on 1 node x 4).
// Every sub-group builds a Buffer and runs dispatch + combine (all sub-groups at once), then the parent
// builds a Buffer of its own while the sub-group's is still alive, then the sub-group's runs again. Every
// rank checks its own results exactly and prints "rank <r>: verified <sub-group job id> (sub-rank s of n) and
// the parent".
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "group_split_exercise.hpp"

using namespace ferry;

namespace {

void require(const std::string& diff) {
  if (!diff.empty()) fail(Errc::internal, diff);
}

int run(const std::string& split, std::uint64_t seed) {
  Group group = Group::from_env();
  std::vector<int> members;
  std::string name;
  if (split == "lanes") {
    for (int node = 0; node < group.num_nodes(); ++node)
      members.push_back(node * group.local_size() + group.local_rank());
    name = "lane" + std::to_string(group.local_rank());
  } else if (split == "halves") {
    const int half = group.world_size() / 2;
    const int first = group.rank() < half ? 0 : half;
    for (int r = first; r < first + half; ++r) members.push_back(r);
    name = "half" + std::to_string(first / half);
  } else {
    fail(Errc::invalid_argument, "unknown --split '" + split + "' (lanes or halves)");
  }
  {
    Group sub = group.split(name, members);
    std::printf("rank %d: sub-group %s is %d nodes x %d, sub-rank %d\n", group.rank(),
                sub.job().job_id.c_str(), sub.num_nodes(), sub.local_size(), sub.rank());
    std::fflush(stdout);
    Buffer buffer(sub, test::split_test_config(sub));
    require(test::run_rounds(buffer, sub, seed, 2));
    {
      // The parent at full width while the sub-groups' Buffers are alive: other shm segments, other keys.
      Buffer whole(group, test::split_test_config(group));
      require(test::run_rounds(whole, group, seed, 1));
    }
    require(test::run_rounds(buffer, sub, seed + 1, 1));
    std::printf("rank %d: verified %s (sub-rank %d of %d) and the parent\n", group.rank(),
                sub.job().job_id.c_str(), sub.rank(), sub.world_size());
  }
  group.barrier("done");
  std::fflush(stdout);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  std::uint64_t seed = 1;
  std::string split;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (std::strcmp(argv[i], "--seed") == 0) seed = std::strtoull(argv[i + 1], nullptr, 10);
    if (std::strcmp(argv[i], "--split") == 0) split = argv[i + 1];
  }
  try {
    return run(split, seed);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "%s\n", error.what());
    return 1;
  }
}
