// The protocol's traffic tally as the public API counts it (buffer.hpp's TrafficCounters).
#pragma once

#include "ferry/buffer.hpp"
#include "ferry/kernels/protocol/step.hpp"

namespace ferry {

inline TrafficCounters public_counters(const kernels::protocol::Traffic& traffic) {
  TrafficCounters counters;
  counters.fabric = {traffic.fabric.messages, traffic.fabric.bytes};
  counters.node = {traffic.node.messages, traffic.node.bytes};
  counters.self = {traffic.self.messages, traffic.self.bytes};
  counters.fabric_puts = traffic.fabric_puts;
  counters.fabric_signals = traffic.fabric_signals;
  return counters;
}

}  // namespace ferry
