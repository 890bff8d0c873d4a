// What a role group that gave up on the GPU leaves for the host: written into host memory mapped for the GPU
// (the first group of a rank to fail wins), read and turned into ferry::Error after the kernel ends.
#pragma once

#include <cstdint>

#include "ferry/core/deadline.hpp"
#include "ferry/kernels/protocol/step.hpp"

namespace ferry::kernels::cuda {

enum class DeviceFailure : std::uint32_t { none = 0, timeout = 1, fault = 2, proxy = 3 };

struct DeviceReport {
  std::uint32_t failure;  // DeviceFailure
  std::int32_t rank;
  std::int32_t channel;  // -1: notify
  std::uint32_t stage;   // protocol::Stage
  protocol::Wait wait;
  protocol::Fault fault;
  std::uint32_t
      proxy_error;  // the command ring's error word (1 + Errc) when failure == proxy; ~0: no slot in time
};

// Throws the ferry::Error the record describes: Errc::timeout naming rank, channel, stage, peer, head and
// tail; Errc::protocol naming the fault; or the proxy's failure.
[[noreturn]] void throw_report(const DeviceReport& report, Duration timeout);

}  // namespace ferry::kernels::cuda
