#include "device_report.hpp"

#include <chrono>
#include <cstdio>
#include <string>

#include "../host/src/describe.hpp"
#include "ferry/core/error.hpp"

namespace ferry::kernels::cuda {

void throw_report(const DeviceReport& report, Duration timeout) {
  const std::string where = "GPU " + host::channel_label(report.rank, report.channel);
  const auto stage = static_cast<protocol::Stage>(report.stage);
  switch (static_cast<DeviceFailure>(report.failure)) {
    case DeviceFailure::timeout: {
      char seconds[32];
      std::snprintf(seconds, sizeof(seconds), "%.2f s", std::chrono::duration<double>(timeout).count());
      fail(Errc::timeout, where + ": no progress for " + seconds + "; stage " + host::stage_name(stage) +
                              " " + host::describe_wait(report.wait));
    }
    case DeviceFailure::fault:
      fail(Errc::protocol, where + " stage " + host::stage_name(stage) +
                               (stage == protocol::Stage::dispatch_send ? " found " : " received ") +
                               host::describe_fault(report.fault));
    case DeviceFailure::proxy:
      if (report.proxy_error == 0xffffffffu) {
        fail(Errc::timeout, where + " stage " + host::stage_name(stage) +
                                ": its command ring stayed full (the proxy thread is not taking commands)");
      }
      fail(Errc::peer_failure, where + " stage " + host::stage_name(stage) + ": the proxy failed (code " +
                                   std::to_string(report.proxy_error) +
                                   "); see the proxy's error on the host");
    case DeviceFailure::none:
      break;
  }
  fail(Errc::internal, where + ": a failure record without a failure");
}

}  // namespace ferry::kernels::cuda
