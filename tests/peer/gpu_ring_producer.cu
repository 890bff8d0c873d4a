#include <cuda_runtime_api.h>

#include <stdexcept>
#include <string>

#include "gpu_ring_producer.hpp"

namespace ferry::test {
namespace {

__device__ std::uint64_t global_time_ns() {
  std::uint64_t now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  return now;
}

__global__ void post_commands(transport::CommandRingView ring, std::uint64_t count, std::uint64_t timeout_ns,
                              std::uint64_t* posted) {
  const std::uint64_t tail = transport::ring_load_acquire(&ring.control->tail);
  transport::CommandRingProducer producer{ring, tail, transport::ring_load_acquire(&ring.control->head)};
  const std::uint64_t start = global_time_ns();
  for (std::uint64_t i = 0; i < count; ++i) {
    const transport::Command command = gpu_expected_command(i);
    while (!producer.try_post(command)) {
      if (transport::ring_load_acquire(&ring.control->error) != 0 || global_time_ns() - start > timeout_ns) {
        *posted = i;
        return;
      }
      __nanosleep(200);
    }
  }
  *posted = count;
}

void check(cudaError_t status, const char* what) {
  if (status != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(status));
}

}  // namespace

std::uint64_t gpu_post_commands(const transport::CommandRingView& device_view, std::uint64_t count,
                                std::uint64_t timeout_ns) {
  std::uint64_t* posted = nullptr;
  check(cudaMalloc(&posted, sizeof(std::uint64_t)), "cudaMalloc");
  post_commands<<<1, 1>>>(device_view, count, timeout_ns, posted);
  std::uint64_t result = 0;
  cudaError_t status = cudaGetLastError();
  if (status == cudaSuccess) status = cudaDeviceSynchronize();
  if (status == cudaSuccess) status = cudaMemcpy(&result, posted, sizeof(result), cudaMemcpyDeviceToHost);
  cudaFree(posted);
  check(status, "post_commands kernel");
  return result;
}

}  // namespace ferry::test
