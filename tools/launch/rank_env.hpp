// What every rank of a `ferry launch` job is told through its environment (DESIGN.md, "Bootstrap and
// launch").
#pragma once

#include <string>
#include <vector>

#include "launch/unique_fd.hpp"

namespace ferry::tools::launch {

struct JobSpec {
  int nodes = 1;
  int ranks_per_node = 1;
  std::string store_host;  // where rank 0 hosts the bootstrap store
  int store_port = 0;
  int store_fd = -1;   // the store's listening socket, open in rank 0 as FERRY_STORE_FD (-1: rank 0 binds)
  std::string secret;  // checked by the store on every connection
  std::string job_id;
  std::vector<std::string> node_addresses;  // one per node
  // torchrun's MASTER_PORT on node 0's address, for torch.distributed's env:// rendezvous (not ferry's
  // store).
  int master_port = 0;
  // The interface every node reaches the others on ("eth0" with --netns; "" otherwise), told to gloo as
  // GLOO_SOCKET_IFNAME: a namespace's hostname (node<i>) resolves nowhere, and gloo would fall back to
  // loopback.
  std::string node_interface;

  int world_size() const { return nodes * ranks_per_node; }
  int node_of(int rank) const { return rank / ranks_per_node; }
  int local_rank_of(int rank) const { return rank % ranks_per_node; }
};

// `chars` hex digits from /dev/urandom (throws Errc::system when it cannot be read).
std::string random_hex(std::size_t chars);

// A TCP socket listening on 127.0.0.1 at a port the kernel picked (read it back with bound_port). It is
// handed to rank 0 as FERRY_STORE_FD, so the port is never free between choosing it and serving on it:
// another local process cannot take it and receive the ranks' HELLOs (with the job secret).
UniqueFd listen_on_free_port();
int bound_port(int fd);

// A port on 127.0.0.1 nobody listens on now, for a rendezvous that binds its own port (torch.distributed's):
// another process may take it before that, as with torchrun's own choice.
int free_loopback_port();

// The environment of `rank`: `base` (NAME=value strings, e.g. environ) with every FERRY_* variable the
// launcher sets replaced (FERRY_STORE_FD only for rank 0, and never inherited), torchrun's variables set too
// (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR = node 0's address, MASTER_PORT),
// so that torch.distributed.init_process_group() works in a rank as under torchrun (GLOO_SOCKET_IFNAME too,
// with --netns), plus
// OPENBLAS_NUM_THREADS=1 and OMP_NUM_THREADS=1 unless `base` sets them.
std::vector<std::string> rank_environment(const JobSpec& job, int rank, const char* const* base);

}  // namespace ferry::tools::launch
