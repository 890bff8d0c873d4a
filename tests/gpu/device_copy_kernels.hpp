// Kernels for the device_copy fabric's GPU tests: a receiver that spins on a signal word and checks each
// chunk the moment its signal arrives, and a producer that posts put_signal commands into a proxy's command
// ring.
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "ferry/transport/command_ring.hpp"

namespace ferry::test {

// The byte at position `index` of a test payload: a hash, so misplaced or stale bytes do not match by luck
// and nothing is all zeros.
FERRY_HD inline std::uint8_t pattern_byte(std::uint64_t seed, std::uint64_t index) {
  std::uint64_t x = (seed ^ 0x9e3779b97f4a7c15ull) + index * 0xbf58476d1ce4e5b9ull;
  x ^= x >> 31;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 29;
  return static_cast<std::uint8_t>(x);
}

// Where a receiving kernel reports. Lives in mapped host memory, so the host reads it while the kernel runs.
struct ReceiverReport {
  std::uint64_t chunks_checked;  // chunks found complete and correct, in order
  std::uint64_t bad_chunk;       // 1 + the first chunk with a wrong byte (0: none)
  std::uint64_t bad_offset;      // offset of that byte inside its chunk
  std::uint64_t timed_out;       // 1 when the kernel gave up waiting for a signal
  std::uint64_t finished;        // 1 once the receiver has stopped, for whatever reason
};

// What a receiver waits for: chunk k (k = 0 .. chunks-1) at data + k * chunk_bytes holds
// pattern_byte(seed, k * chunk_bytes + i) once *signal >= k + 1.
struct ReceiverPlan {
  const std::uint64_t* signal;
  const std::uint8_t* data;
  std::size_t chunk_bytes;
  std::uint64_t chunks;
  std::uint64_t seed;
  std::uint64_t timeout_ns;
};

// Starts the receiver on `stream`. With fill_gpu, every SM is filled with co-resident blocks (a cooperative
// launch of the occupancy limit) that all spin until the last signal, as a dispatch kernel may; otherwise one
// block. `report` must be mapped host memory (device pointer of a cudaHostAllocMapped allocation). Returns
// the launch status.
cudaError_t launch_receiver(const ReceiverPlan& plan, ReceiverReport* report, bool fill_gpu,
                            cudaStream_t stream, int* blocks_launched);

// A producer: one thread posts `chunks` put_signal commands into `ring` (peer, region 0, chunk k from
// local_base + k * chunk_bytes to remote_base + k * chunk_bytes, signal word at signal_offset, add 1), and in
// the same launch a second block runs the receiver for `plan`. Returns the launch status.
struct ProducerPlan {
  transport::CommandRingView ring;
  std::uint16_t peer;
  std::uint64_t local_base;
  std::uint64_t remote_base;
  std::uint32_t signal_offset;
  std::uint64_t chunk_bytes;
  std::uint64_t chunks;
  std::uint64_t timeout_ns;
};
cudaError_t launch_producer_and_receiver(const ProducerPlan& producer, std::uint64_t* posted,
                                         const ReceiverPlan& receiver, ReceiverReport* report,
                                         cudaStream_t stream);

}  // namespace ferry::test
