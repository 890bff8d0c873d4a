// An outside project: builds against the installed ferry and runs a single-rank group.
#include <cstdio>
#include <ferry/ferry.hpp>

int main() {
  auto group = ferry::Group::from_env();
  group.barrier("consumer");
  std::printf("consumer: ferry %s, rank %d of %d, %d node(s)\n", ferry::version(), group.rank(),
              group.world_size(), group.num_nodes());
  return group.world_size() == 1 && group.rank() == 0 ? 0 : 1;
}
