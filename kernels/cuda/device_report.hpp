// What a role group that gave up on the GPU leaves for the host: written into host memory mapped for the GPU
// (the first group of a rank to fail wins), read and turned into ferry::Error after the kernel ends. What the
// record holds is decided by make_report(), plain code the host's tests run
// (tests/unit/test_device_bookkeeping).
#pragma once

#include <cstdint>

#include "ferry/core/deadline.hpp"
#include "ferry/kernels/protocol/hd.hpp"
#include "ferry/kernels/protocol/plan.hpp"
#include "ferry/kernels/protocol/role_loop.hpp"
#include "ferry/kernels/protocol/step.hpp"

namespace ferry::kernels::cuda {

enum class DeviceFailure : std::uint32_t { none = 0, timeout = 1, fault = 2, proxy = 3 };

struct DeviceReport {
  std::uint32_t failure;    // DeviceFailure
  std::uint32_t operation;  // the failed operation's sequence number (OpContext::operation)
  std::int32_t rank;
  std::int32_t channel;  // -1: notify
  std::uint32_t stage;   // protocol::Stage
  protocol::Wait wait;
  protocol::Fault fault;
  std::uint32_t
      proxy_error;  // the command ring's error word (1 + Errc) when failure == proxy; ~0: no slot in time
};

// How a role group ended, as a failure: the proxy's first (the group could not post), then a fault, then a
// timeout. A group stopped because another one failed (RoleEnd::aborted) records nothing.
FERRY_HD inline DeviceFailure failure_of(const protocol::RoleOutcome& outcome, bool proxy_failed) {
  if (proxy_failed) return DeviceFailure::proxy;
  if (outcome.end == protocol::RoleEnd::fault) return DeviceFailure::fault;
  if (outcome.end == protocol::RoleEnd::timeout) return DeviceFailure::timeout;
  return DeviceFailure::none;
}

// The record of a failure of a role group of operation `ctx.operation` on rank `ctx.rank` in `channel` (-1:
// notify). `ctx` is the context of the plan the group ran (a combine's for a combine: the dispatch part of a
// launch plan is not filled then).
FERRY_HD inline DeviceReport make_report(DeviceFailure failure, const protocol::OpContext& ctx, int channel,
                                         const protocol::RoleOutcome& outcome, std::uint32_t proxy_error) {
  DeviceReport report{};
  report.failure = static_cast<std::uint32_t>(failure);
  report.operation = ctx.operation;
  report.rank = ctx.rank;
  report.channel = channel;
  report.stage = static_cast<std::uint32_t>(outcome.last.stage);
  report.wait = outcome.last.wait;
  report.fault = outcome.last.fault;
  report.proxy_error = proxy_error;
  return report;
}

// Throws the ferry::Error the record describes: Errc::timeout naming rank, channel, stage, peer, head and
// tail; Errc::protocol naming the fault; or the proxy's failure.
[[noreturn]] void throw_report(const DeviceReport& report, Duration timeout);

}  // namespace ferry::kernels::cuda
