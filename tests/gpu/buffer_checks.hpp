// The public API on the GPU, as a user calls it: one rank's ferry::Buffer(group, config, Device::cuda) with
// device tensors, checked against the host reference (tests/dispatch). Every rank of the group runs the same
// sequence (each builds the same scenarios from the seed and computes the reference for itself):
//   - the device layout (get_layout on a device topk_idx) against compute_layout, and it alone feeding
//   dispatch;
//   - bf16 inputs uploaded on the caller's stream (DispatchOptions::stream) and the layout computed after
//     that stream (get_layout's stream, the upload still in flight), the result read back on that stream
//     after Event::stream_wait; a cached dispatch of NEW rows from a new tensor, the old one poisoned, so a
//     path that reads the first call's pointer fails; combine with the received weights and a bias;
//   - fp8 with scales, the same;
//   - fp32 with worst-case sizing and expert_alignment 4: padding rows zero with topk -1 and weight 0,
//     aligned tokens_per_local_expert, the cached dispatch issued from on_allocated's handle before the first
//     dispatch is waited for (its rows and num_recv_tokens must not depend on that wait), combine on the
//     worst-case handle;
//   - overflow: num_worst_tokens one short on the fullest rank fails that rank's dispatch by name and leaves
//     the Buffer usable (the next dispatch is checked);
//   - host tensors refused by name, and a dispatch on a stream being captured into a CUDA graph.
// Every rank passes a barrier at the end of each round before the round's tensors are dropped (ranks that are
// threads of one process share the GPU).
// Checks never stop the sequence (the other ranks would wait for this one): the first difference is kept.
#pragma once

#include <cstdint>

#include "check_result.hpp"
#include "ferry/group.hpp"

namespace ferry::test {

// Collective over the group. seed: the same on every rank.
GpuCheckResult check_cuda_buffer(Group& group, std::uint64_t seed);

}  // namespace ferry::test
