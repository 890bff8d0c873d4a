// The public ferry::LowLatencyBuffer on Device::cuda, as users call it: device tensors uploaded on the
// caller's stream (the options' stream), every result read back on that stream, and compared with a host
// LowLatencyBuffer of the same group on the same inputs (the two executors share the protocol and its
// arithmetic, so the rows, scales, counts and sums must be equal bit for bit). bf16, fp8, fp8 with UE8M0
// scales; plain calls, hook calls (the receive half enqueued by the hook; their combine sends from
// get_next_low_latency_combine_buffer, zero copy) and async_finish (the caller's stream ordered after the
// Event); every round adds into the three statistics tensors (device tensors starting from non-zero values:
// the counts must be the start plus recv_count). Then what is refused by name (host tensors, a host
// statistics tensor), a dispatch and its combine captured into a CUDA graph and launched three times with
// changed inputs (and what is refused while the capture is open, and zero copy after it until a clean), a bad
// expert id reported by the call's event and a clean after it, the mask, and a round in which the last rank
// is masked by the others and sits out. Collective: every rank of the group runs the same sequence (ranks may
// be threads of one process, or processes, sharing a GPU). Checks never stop the sequence (the other ranks
// would wait for this one): the first difference is kept.
#pragma once

#include <cstdint>

#include "check_result.hpp"
#include "ferry/group.hpp"

namespace ferry::test {

GpuCheckResult check_low_latency_buffer(Group& group, std::uint64_t seed);

}  // namespace ferry::test
