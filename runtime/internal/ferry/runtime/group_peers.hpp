// The transport layer's view of a Group (store, ranks, job id). Internal: for the runtime, tools and tests,
// which build transports on a Group; not installed, so the public headers stay free of transport types.
#pragma once

#include "ferry/core/deadline.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/peers.hpp"

namespace ferry::runtime {

// Peers borrows the group's store: the group must outlive every transport made from it.
transport::Peers group_peers(Group& group, Duration timeout = kDefaultTimeout);

}  // namespace ferry::runtime
