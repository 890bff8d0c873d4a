#include <climits>

#include "device_copy_kernels.hpp"

namespace ferry::test {
namespace {

constexpr int kReceiverThreads = 256;

__device__ std::uint64_t now_ns() {
  std::uint64_t now;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(now));
  return now;
}

// Signal words are written by copy engines while the kernel runs: read them with acquire at gpu scope, which
// also keeps the payload loads that follow from running ahead of it.
__device__ std::uint64_t load_acquire_gpu(const std::uint64_t* address) {
  std::uint64_t value;
  asm volatile("ld.acquire.gpu.global.u64 %0, [%1];" : "=l"(value) : "l"(address) : "memory");
  return value;
}

__device__ bool wait_signal(const std::uint64_t* signal, std::uint64_t target, std::uint64_t deadline) {
  while (load_acquire_gpu(signal) < target) {
    if (now_ns() > deadline) return false;
    __nanosleep(100);
  }
  return true;
}

// One block checks chunk after chunk, each right after its signal arrives, and publishes its progress so the
// host can pace the puts (one chunk in flight: a signal that overtook its payload would be caught at once).
__device__ void receive_chunks(const ReceiverPlan& plan, ReceiverReport* report) {
  __shared__ int timed_out;
  __shared__ unsigned long long bad;
  const std::uint64_t deadline = now_ns() + plan.timeout_ns;
  if (threadIdx.x == 0) bad = ULLONG_MAX;
  for (std::uint64_t k = 0; k < plan.chunks; ++k) {
    if (threadIdx.x == 0) timed_out = !wait_signal(plan.signal, k + 1, deadline);
    __syncthreads();
    if (timed_out) break;
    const std::uint8_t* chunk = plan.data + k * plan.chunk_bytes;
    for (std::size_t i = threadIdx.x; i < plan.chunk_bytes; i += blockDim.x) {
      // __ldcg: from L2, never a stale L1 line.
      if (__ldcg(chunk + i) != pattern_byte(plan.seed, k * plan.chunk_bytes + i)) {
        atomicMin(&bad, static_cast<unsigned long long>(i));
      }
    }
    __syncthreads();
    const unsigned long long found = bad;
    __syncthreads();  // every thread has read `bad` before thread 0 publishes and resets it
    if (threadIdx.x == 0) {
      if (found != ULLONG_MAX) {
        report->bad_offset = found;
        transport::ring_store_release(&report->bad_chunk, k + 1);
      } else {
        transport::ring_store_release(&report->chunks_checked, k + 1);
      }
      bad = ULLONG_MAX;
    }
    if (found != ULLONG_MAX) break;
  }
  if (threadIdx.x == 0) {
    if (timed_out) transport::ring_store_release(&report->timed_out, 1);
    transport::ring_store_release(&report->finished, 1);
  }
}

__global__ void receiver_kernel(ReceiverPlan plan, ReceiverReport* report) {
  if (blockIdx.x == 0) {
    receive_chunks(plan, report);
    return;
  }
  // The other blocks hold their SMs until the receiver is done, as the spinning warps of a dispatch kernel
  // would: the copies must make progress without any SM.
  if (threadIdx.x == 0) {
    const std::uint64_t deadline = now_ns() + plan.timeout_ns;
    while (transport::ring_load_acquire(&report->finished) == 0 && now_ns() < deadline) __nanosleep(1000);
  }
  __syncthreads();
}

__global__ void producer_receiver_kernel(ProducerPlan plan, std::uint64_t* posted, ReceiverPlan receiver,
                                         ReceiverReport* report) {
  if (blockIdx.x == 1) {
    receive_chunks(receiver, report);
    return;
  }
  if (threadIdx.x != 0) return;
  transport::CommandRingProducer producer{plan.ring, transport::ring_load_acquire(&plan.ring.control->tail),
                                          transport::ring_load_acquire(&plan.ring.control->head)};
  const std::uint64_t deadline = now_ns() + plan.timeout_ns;
  for (std::uint64_t k = 0; k < plan.chunks; ++k) {
    const transport::Command command = transport::make_put_signal(
        plan.peer, 0, plan.local_base + k * plan.chunk_bytes, plan.remote_base + k * plan.chunk_bytes,
        static_cast<std::uint32_t>(plan.chunk_bytes), plan.signal_offset, 1);
    while (!producer.try_post(command)) {
      if (transport::ring_load_acquire(&plan.ring.control->error) != 0 || now_ns() > deadline) {
        transport::ring_store_release(posted, k);
        return;
      }
      __nanosleep(200);
    }
  }
  transport::ring_store_release(posted, plan.chunks);
}

}  // namespace

cudaError_t launch_receiver(const ReceiverPlan& plan, ReceiverReport* report, bool fill_gpu,
                            cudaStream_t stream, int* blocks_launched) {
  int blocks = 1;
  if (fill_gpu) {
    int device = 0;
    int sms = 0;
    int per_sm = 0;
    cudaError_t status = cudaGetDevice(&device);
    if (status == cudaSuccess) status = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
    if (status == cudaSuccess) {
      status = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, receiver_kernel, kReceiverThreads, 0);
    }
    if (status != cudaSuccess) return status;
    blocks = sms * per_sm;
  }
  *blocks_launched = blocks;
  ReceiverPlan plan_copy = plan;
  void* args[] = {&plan_copy, &report};
  // Cooperative: every block is co-resident, or the launch fails instead of deadlocking.
  return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(receiver_kernel), dim3(blocks),
                                     dim3(kReceiverThreads), args, 0, stream);
}

cudaError_t launch_producer_and_receiver(const ProducerPlan& producer, std::uint64_t* posted,
                                         const ReceiverPlan& receiver, ReceiverReport* report,
                                         cudaStream_t stream) {
  ProducerPlan producer_copy = producer;
  ReceiverPlan receiver_copy = receiver;
  void* args[] = {&producer_copy, &posted, &receiver_copy, &report};
  return cudaLaunchCooperativeKernel(reinterpret_cast<void*>(producer_receiver_kernel), dim3(2),
                                     dim3(kReceiverThreads), args, 0, stream);
}

}  // namespace ferry::test
