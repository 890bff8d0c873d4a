// What a transport needs to know about the job to set itself up: who we are, who the others are, and the
// bootstrap store to exchange descriptors through. Built by the runtime from a ferry::Group.
#pragma once

#include <string>

#include "ferry/core/deadline.hpp"
#include "ferry/transport/store.hpp"

namespace ferry::transport {

struct Peers {
  Store* store = nullptr;
  // The job's failure as the store knows it (null: not watched). Waits that do not talk to the store (a
  // fabric barrier polling a counter, the data path) ask it, so a failure elsewhere ends them at once.
  const StoreWatch* watch = nullptr;
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string job_id;                  // unique per job: names of shm segments and store keys include it
  Duration timeout = kDefaultTimeout;  // deadline of every set-up wait and every data-path wait

  int node() const { return rank / local_size; }
  int num_nodes() const { return world_size / local_size; }
  int rank_of(int node, int local) const { return node * local_size + local; }
};

}  // namespace ferry::transport
