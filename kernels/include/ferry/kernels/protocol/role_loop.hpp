// Running one role instance until it finishes: the loop a GPU warp group runs (and the host's thread-per-role
// groups), written once. It steps the role; on progress it steps again at once; when stuck it checks whether
// the operation was abandoned elsewhere and whether its own deadline passed, then pauses briefly.
//
// The Io adds to io.hpp's policy: now() (nanoseconds, the same value in every thread of the group), aborted()
// (another role of the operation failed; the same answer in every thread), pause(attempt) (back off) and
// progressed(before, now) (the role made progress at `now`, its previous progress was at `before`: the GPU's
// Io keeps a heartbeat the host watches; the host's Io does nothing).
#pragma once

#include <cstdint>

#include "ferry/kernels/protocol/hd.hpp"
#include "ferry/kernels/protocol/step.hpp"

namespace ferry::kernels::protocol {

enum class RoleEnd : std::uint8_t { done, fault, timeout, aborted };

struct RoleOutcome {
  RoleEnd end = RoleEnd::done;
  StepResult last;  // the final step's report: what it waited for (timeout) or found wrong (fault)
};

template <class Role, class Io>
FERRY_HD inline RoleOutcome drive_role(Role& role, Io& io, std::uint64_t timeout_ns) {
  RoleOutcome outcome;
  std::uint64_t last_progress = io.now();
  unsigned attempt = 0;
  while (true) {
    outcome.last = role.step(io);
    if (outcome.last.fault.any()) {
      outcome.end = RoleEnd::fault;
      return outcome;
    }
    if (outcome.last.done) return outcome;
    if (outcome.last.progressed) {
      const std::uint64_t now = io.now();
      io.progressed(last_progress, now);
      last_progress = now;
      attempt = 0;
      continue;
    }
    if (io.aborted()) {
      outcome.end = RoleEnd::aborted;
      return outcome;
    }
    if (io.now() - last_progress > timeout_ns) {
      outcome.end = RoleEnd::timeout;
      return outcome;
    }
    io.pause(attempt++);
  }
}

}  // namespace ferry::kernels::protocol
