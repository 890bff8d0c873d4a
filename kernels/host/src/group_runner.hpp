// Runs role instances the way a GPU does: each by a group of lanes (LaneIo, lane_group.hpp) driving it with
// the shared role loop (protocol/role_loop.hpp), all groups of an operation at once. The engine uses it when
// EngineOptions::lanes > 1, to prove the device execution model on the CPU.
#pragma once

#include <atomic>
#include <functional>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/kernels/host/memory.hpp"
#include "ferry/kernels/protocol/role_loop.hpp"
#include "ferry/kernels/protocol/step.hpp"
#include "lane_group.hpp"

namespace ferry::kernels::host {

struct GroupJob {
  int channel = -1;  // -1: notify
  // Builds the role with this lane's Io (every lane builds its own copy) and drives it to its end.
  std::function<protocol::RoleOutcome(LaneIo&)> run;
};

struct GroupRun {
  int rank = 0;
  int lanes = 2;
  Duration timeout = kDefaultTimeout;
  std::byte* local = nullptr;
  const NodeMemory* node = nullptr;
  std::vector<RemoteWriter*> writers;  // one per job (nullptr without remote memory)
  PeerHealth* health = nullptr;
};

// Runs every job by `lanes` threads and adds each leader's tally to `total`. Throws the first failure (a
// fault, a timeout naming what the stuck role waited for, a fabric failure) as ferry::Error.
void run_groups(const std::vector<GroupJob>& jobs, const GroupRun& run, protocol::Traffic& total);

}  // namespace ferry::kernels::host
