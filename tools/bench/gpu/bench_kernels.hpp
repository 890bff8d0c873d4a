// The kernels behind the GPU benchmarks (bench_kernels.cu): the SM-bounded copy, random fills, comparison,
// and a probe that reports which SMs a stream's blocks run on. Their register and shared-memory use is
// checked in CI (bench_kernels.shapes, cmake/FerryCudaResources.cmake).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

namespace ferry::gpu_bench::detail {

inline constexpr int kCopyThreads = 1024;
// More than half of an SM's shared memory on A100 (164 KiB) and H100/H200 (228 KiB), and under the per-block
// maximum of both: no two copy blocks share an SM, so N blocks occupy exactly N SMs. The kernel never touches
// it.
inline constexpr int kCopyReservedSharedBytes = 116 << 10;

// Copy-kernel blocks that fit on one SM of the current device (1 by design; checked before measuring).
int copy_kernel_blocks_per_sm();
// dst[0, bytes) = src[0, bytes) with `blocks` blocks; bytes a multiple of 16, both pointers 16-byte aligned.
void launch_copy_kernel(const void* src, void* dst, std::size_t bytes, int blocks, cudaStream_t stream);

// Fills [memory, +bytes) with random bytes from `seed` (bytes a multiple of 16), on `stream`.
void fill_random(void* memory, std::size_t bytes, std::uint64_t seed, cudaStream_t stream);
// Throws Errc::internal naming `what` unless the two device ranges hold the same bytes (a multiple of 16).
void expect_equal(const void* a, const void* b, std::size_t bytes, cudaStream_t stream,
                  const std::string& what);
// `count` bf16 values drawn uniformly from [-1, 1) (finite, never all zeros), on `stream`.
void fill_random_bf16(void* memory, std::size_t count, std::uint64_t seed, cudaStream_t stream);

// The distinct SM ids that `blocks` short-lived blocks launched on `stream` ran on (each lingers ~50 us so
// that blocks spread over every SM the stream may use). The blocks write their SM ids into `scratch` (device
// memory of at least blocks * sizeof(int) bytes, which may belong to another context than the stream: that is
// part of what the probe checks). Waits (bounded) for the probe to finish.
std::vector<int> sms_reached(int blocks, cudaStream_t stream, void* scratch);

}  // namespace ferry::gpu_bench::detail
