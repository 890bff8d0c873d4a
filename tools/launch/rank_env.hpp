// What every rank of a `ferry launch` job is told through its environment (DESIGN.md, "Bootstrap and
// launch").
#pragma once

#include <string>
#include <vector>

namespace ferry::tools::launch {

struct JobSpec {
  int nodes = 1;
  int ranks_per_node = 1;
  std::string store_host;  // where rank 0 hosts the bootstrap store
  int store_port = 0;
  std::string secret;  // checked by the store on every connection
  std::string job_id;
  std::vector<std::string> node_addresses;  // one per node

  int world_size() const { return nodes * ranks_per_node; }
  int node_of(int rank) const { return rank / ranks_per_node; }
  int local_rank_of(int rank) const { return rank % ranks_per_node; }
};

// `chars` hex digits from /dev/urandom (throws Errc::system when it cannot be read).
std::string random_hex(std::size_t chars);

// A TCP port on 127.0.0.1 that was free a moment ago: bound to port 0, read back, closed. Rank 0 binds it
// next; the window in between is short and a collision surfaces as the store's bind error.
int find_free_port();

// The environment of `rank`: `base` (NAME=value strings, e.g. environ) with every FERRY_* variable the
// launcher sets replaced, plus OPENBLAS_NUM_THREADS=1 and OMP_NUM_THREADS=1 unless `base` sets them.
std::vector<std::string> rank_environment(const JobSpec& job, int rank, const char* const* base);

}  // namespace ferry::tools::launch
