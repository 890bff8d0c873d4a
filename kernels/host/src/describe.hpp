// Error text for the executor: what a stuck or faulty role was doing, in words that name rank, channel,
// stage, peer, head and tail.
#pragma once

#include <string>

#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"
#include "ferry/kernels/protocol/step.hpp"

namespace ferry::kernels::host {

const char* stage_name(protocol::Stage stage);
const char* ring_name(protocol::RingKind ring);
std::string describe_wait(const protocol::Wait& wait);
std::string describe_fault(const protocol::Fault& fault);
// The low-latency mode's faults (its words, rows and count blocks), for both of its engines.
std::string describe_low_latency_fault(const protocol::Fault& fault);

std::string channel_label(int rank, int channel);

// "1.50 s": a timeout in an error message.
std::string seconds_text(Duration duration);

}  // namespace ferry::kernels::host
