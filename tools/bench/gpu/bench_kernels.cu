#include <cuda_bf16.h>

#include <algorithm>
#include <string>
#include <utility>

#include "bench/gpu/bench_kernels.hpp"
#include "bench/gpu/gpu_support.hpp"
#include "ferry/core/error.hpp"

namespace ferry::gpu_bench::detail {
namespace {

constexpr int kCopyUnroll = 4;  // 16-byte loads in flight per thread before the first store
constexpr int kHelperThreads = 256;

// Streamed data: read once, so neither L1 nor (beyond the 256-byte prefetch) anything else should keep it.
__device__ __forceinline__ uint4 load_streaming(const uint4* address) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.L2::256B.v4.u32 {%0, %1, %2, %3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(address));
  return v;
}

__device__ __forceinline__ void store_streaming(uint4* address, const uint4& v) {
  asm volatile("st.global.L1::no_allocate.v4.u32 [%0], {%1, %2, %3, %4};" ::"l"(address), "r"(v.x), "r"(v.y),
               "r"(v.z), "r"(v.w)
               : "memory");
}

// Persistent grid: each thread strides by the whole grid, kCopyUnroll vectors at a time.
__global__ void __launch_bounds__(kCopyThreads, 1)
    copy_kernel(const uint4* __restrict__ source, uint4* __restrict__ target, std::size_t count) {
  const std::size_t stride = static_cast<std::size_t>(gridDim.x) * blockDim.x;
  std::size_t i = static_cast<std::size_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  for (; i + (kCopyUnroll - 1) * stride < count; i += kCopyUnroll * stride) {
    uint4 v[kCopyUnroll];
#pragma unroll
    for (int u = 0; u < kCopyUnroll; ++u) v[u] = load_streaming(source + i + u * stride);
#pragma unroll
    for (int u = 0; u < kCopyUnroll; ++u) store_streaming(target + i + u * stride, v[u]);
  }
  for (; i < count; i += stride) store_streaming(target + i, load_streaming(source + i));
}

__device__ __forceinline__ std::uint64_t mix(std::uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

__global__ void fill_random_kernel(uint4* target, std::size_t count, std::uint64_t seed) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const std::uint64_t a = mix(seed ^ (2 * i)), b = mix(seed ^ (2 * i + 1));
    target[i] = make_uint4(static_cast<unsigned>(a), static_cast<unsigned>(a >> 32), static_cast<unsigned>(b),
                           static_cast<unsigned>(b >> 32));
  }
}

__global__ void count_differences_kernel(const uint4* a, const uint4* b, std::size_t count,
                                         unsigned long long* differences) {
  unsigned long long mine = 0;
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    const uint4 x = a[i], y = b[i];
    mine += (x.x != y.x) + (x.y != y.y) + (x.z != y.z) + (x.w != y.w);
  }
  if (mine != 0) atomicAdd(differences, mine);
}

__global__ void fill_random_bf16_kernel(__nv_bfloat16* target, std::size_t count, std::uint64_t seed) {
  for (std::size_t i = blockIdx.x * static_cast<std::size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<std::size_t>(gridDim.x) * blockDim.x) {
    // 24 random bits -> [-1, 1)
    const float unit = static_cast<float>(mix(seed ^ i) >> 40) * (1.0f / 16777216.0f);
    target[i] = __float2bfloat16(2.0f * unit - 1.0f);
  }
}

__device__ std::uint64_t now_ns() {
  std::uint64_t now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  return now;
}

__global__ void sm_probe_kernel(int* sm_of_block) {
  if (threadIdx.x != 0) return;
  int sm;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
  sm_of_block[blockIdx.x] = sm;
  const std::uint64_t until = now_ns() + 50'000;
  while (now_ns() < until) {
  }
}

// Launches and checks the launch's own status (cudaGetLastError could also hold an earlier call's).
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), int blocks, int threads, int shared_bytes,
            cudaStream_t stream, Args&&... args) {
  cudaLaunchConfig_t config{};
  config.gridDim = dim3(static_cast<unsigned>(blocks));
  config.blockDim = dim3(static_cast<unsigned>(threads));
  config.dynamicSmemBytes = static_cast<std::size_t>(shared_bytes);
  config.stream = stream;
  check_cuda(cudaLaunchKernelEx(&config, kernel, std::forward<Args>(args)...),
             std::string("launching ") + name + " on " + std::to_string(blocks) + " blocks");
}

int helper_blocks(std::size_t count) {
  return static_cast<int>(std::min<std::size_t>((count + kHelperThreads - 1) / kHelperThreads, 4096));
}

}  // namespace

int copy_kernel_blocks_per_sm() {
  check_cuda(cudaFuncSetAttribute(copy_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  kCopyReservedSharedBytes),
             "cudaFuncSetAttribute(copy_kernel, max dynamic shared memory)");
  int blocks = 0;
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, copy_kernel, kCopyThreads,
                                                           kCopyReservedSharedBytes),
             "cudaOccupancyMaxActiveBlocksPerMultiprocessor(copy_kernel)");
  return blocks;
}

void launch_copy_kernel(const void* source, void* target, std::size_t bytes, int blocks,
                        cudaStream_t stream) {
  // Set on every launch: the attribute belongs to the current context, which may be a green context.
  check_cuda(cudaFuncSetAttribute(copy_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  kCopyReservedSharedBytes),
             "cudaFuncSetAttribute(copy_kernel, max dynamic shared memory)");
  launch("copy_kernel", copy_kernel, blocks, kCopyThreads, kCopyReservedSharedBytes, stream,
         static_cast<const uint4*>(source), static_cast<uint4*>(target), bytes / sizeof(uint4));
}

void fill_random(void* memory, std::size_t bytes, std::uint64_t seed, cudaStream_t stream) {
  const std::size_t count = bytes / sizeof(uint4);
  launch("fill_random_kernel", fill_random_kernel, helper_blocks(count), kHelperThreads, 0, stream,
         static_cast<uint4*>(memory), count, seed);
}

void expect_equal(const void* a, const void* b, std::size_t bytes, cudaStream_t stream,
                  const std::string& what) {
  DeviceMemory counter(sizeof(unsigned long long), "a difference counter");
  check_cuda(cudaMemsetAsync(counter.get(), 0, sizeof(unsigned long long), stream), "cudaMemsetAsync");
  const std::size_t count = bytes / sizeof(uint4);
  launch("count_differences_kernel", count_differences_kernel, helper_blocks(count), kHelperThreads, 0,
         stream, static_cast<const uint4*>(a), static_cast<const uint4*>(b), count,
         static_cast<unsigned long long*>(counter.get()));
  unsigned long long differences = 0;
  check_cuda(
      cudaMemcpyAsync(&differences, counter.get(), sizeof(differences), cudaMemcpyDeviceToHost, stream),
      "cudaMemcpyAsync of the difference count");
  wait_stream(stream, "the check of " + what);
  if (differences != 0) {
    fail(Errc::internal, what + ": " + std::to_string(differences) + " of " + std::to_string(bytes / 4) +
                             " 32-bit words differ from the source");
  }
}

void fill_random_bf16(void* memory, std::size_t count, std::uint64_t seed, cudaStream_t stream) {
  launch("fill_random_bf16_kernel", fill_random_bf16_kernel, helper_blocks(count), kHelperThreads, 0, stream,
         static_cast<__nv_bfloat16*>(memory), count, seed);
}

std::vector<int> sms_reached(int blocks, cudaStream_t stream, void* scratch) {
  launch("sm_probe_kernel", sm_probe_kernel, blocks, 32, 0, stream, static_cast<int*>(scratch));
  std::vector<int> sms(static_cast<std::size_t>(blocks));
  check_cuda(cudaMemcpyAsync(sms.data(), scratch, sizeof(int) * blocks, cudaMemcpyDeviceToHost, stream),
             "cudaMemcpyAsync of the SM probe");
  wait_stream(stream, "the SM probe");
  std::sort(sms.begin(), sms.end());
  sms.erase(std::unique(sms.begin(), sms.end()), sms.end());
  return sms;
}

}  // namespace ferry::gpu_bench::detail
