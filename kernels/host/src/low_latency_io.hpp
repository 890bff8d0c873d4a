// The Io the low-latency roles run with on the host: HostIo (one thread, plain memory, the proxy's writer for
// other nodes) plus the clock, the pause and the two bulk operations the roles need (role_loop.hpp,
// low_latency_roles.hpp).
#pragma once

#include <chrono>
#include <cstdint>
#include <thread>

#include "ferry/core/deadline.hpp"
#include "ferry/kernels/host/host_io.hpp"
#include "ferry/kernels/host/low_latency_numeric.hpp"

namespace ferry::kernels::host {

class LowLatencyHostIo : public HostIo {
 public:
  using HostIo::HostIo;

  static std::uint64_t now() {
    return static_cast<std::uint64_t>(
        std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now().time_since_epoch()).count());
  }
  // Nothing else runs this operation's roles on this rank: nobody can abandon it from outside.
  static bool aborted() { return false; }
  // The host needs no heartbeat: the thread that waits sees its own progress.
  static void progressed(std::uint64_t, std::uint64_t) {}
  // Spin, then yield, then sleep up to 1 ms (deadline.hpp's Backoff, driven by the role loop's attempt
  // count); a stalled wait also hands the fabric writer's held commands on.
  void pause(unsigned attempt) {
    if (remote() != nullptr && attempt % 64 == 0) remote()->flush();
    if (attempt < 64) return;
    if (attempt < 128) {
      std::this_thread::yield();
      return;
    }
    const unsigned shift = attempt - 128 < 9 ? attempt - 128 : 9;
    std::this_thread::sleep_for(std::chrono::microseconds(2u << shift));
  }

  static void quantize(const protocol::QuantizeRow& job) { host::quantize_row(job); }
  static void weighted_sum(const protocol::WeightedRows& job) { host::weighted_sum(job); }
};

}  // namespace ferry::kernels::host
