#include "ferry/runtime/group_peers.hpp"

namespace ferry::runtime {

transport::Peers group_peers(Group& group, Duration timeout) {
  transport::Peers peers;
  peers.store = &group.store();
  peers.watch = group.failure_watch().get();  // the group (which owns one reference) outlives its transports
  peers.rank = group.rank();
  peers.world_size = group.world_size();
  peers.local_rank = group.local_rank();
  peers.local_size = group.local_size();
  peers.job_id = group.job().job_id;
  peers.timeout = timeout;
  return peers;
}

}  // namespace ferry::runtime
