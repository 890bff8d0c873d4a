// A CUDA kernel as the producer of a command ring (the role dispatch/combine kernels will play).
#pragma once

#include <cstdint>

#include "ferry/transport/command_ring.hpp"

namespace ferry::test {

// One GPU thread posts `count` put_signal commands (command i: peer i % 7, local_offset i, remote_offset 3i,
// bytes 64, signal_offset 8 * (i % 5), signal_add 1) into the ring addressed by `device_view`, waiting for
// credit as it goes. Returns how many it posted before finishing or giving up after `timeout_ns`.
// Throws std::runtime_error on a CUDA error.
std::uint64_t gpu_post_commands(const transport::CommandRingView& device_view, std::uint64_t count,
                                std::uint64_t timeout_ns);

FERRY_HD inline transport::Command gpu_expected_command(std::uint64_t i) {
  return transport::make_put_signal(static_cast<std::uint16_t>(i % 7), 0, i, 3 * i, 64,
                                    static_cast<std::uint32_t>(8 * (i % 5)), 1);
}

}  // namespace ferry::test
