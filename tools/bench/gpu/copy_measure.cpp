// The copy bounds: the SM-bounded copy kernel and the whole-GPU device copy, timed with CUDA events.
#include <string>
#include <vector>

#include "bench/gpu/bench_kernels.hpp"
#include "bench/gpu/gpu_bench.hpp"
#include "bench/gpu/gpu_support.hpp"
#include "ferry/core/error.hpp"

namespace ferry::gpu_bench {

namespace {

constexpr int kWarmups = 2;
constexpr std::uint8_t kPoison = 0xa5;  // the target before every run: a copy that skips bytes cannot pass

std::size_t checked_bytes(std::size_t bytes, const char* who) {
  const std::size_t rounded = bytes / 16 * 16;
  if (rounded == 0) fail(Errc::invalid_argument, std::string(who) + ": bytes must be at least 16");
  return rounded;
}

void check_iters(int iters, const char* who) {
  if (iters < 1)
    fail(Errc::invalid_argument, std::string(who) + ": iters is " + std::to_string(iters) + "; need >= 1");
}

// Times `run(stream)` `iters` times after warm-ups, poisoning the target before each run, and returns the
// median in ms. The last run's output is then checked against the source.
template <typename Run>
double time_copies(const detail::DeviceMemory& source, const detail::DeviceMemory& target, std::size_t bytes,
                   int iters, const std::string& what, Run run) {
  detail::Stream stream;
  detail::Event start, stop;
  std::vector<double> times;
  for (int i = -kWarmups; i < iters; ++i) {
    detail::check_cuda(cudaMemsetAsync(target.get(), kPoison, bytes, stream.get()),
                       "cudaMemsetAsync (poison)");
    detail::check_cuda(cudaEventRecord(start.get(), stream.get()), "cudaEventRecord");
    run(stream.get());
    detail::check_cuda(cudaEventRecord(stop.get(), stream.get()), "cudaEventRecord");
    detail::wait_event(stop.get(), what);
    if (i >= 0) times.push_back(detail::elapsed_ms(start.get(), stop.get()));
  }
  detail::expect_equal(source.get(), target.get(), bytes, stream.get(), what);
  return detail::median(times);
}

// Random bytes, never zeros: a copy must not be timed (or checked) on data that hides unwritten output.
void fill(const detail::DeviceMemory& memory, std::uint64_t seed) {
  detail::Stream stream;
  detail::fill_random(memory.get(), memory.bytes(), seed, stream.get());
  detail::wait_stream(stream.get(), "the random fill");
}

double gbps(std::size_t bytes, double ms) {
  return 2.0 * static_cast<double>(bytes) / (ms * 1e-3) / 1e9;  // bytes read + bytes written
}

}  // namespace

GpuDescription describe_gpu(int device) {
  detail::UseDevice use(device);
  cudaDeviceProp properties{};
  detail::check_cuda(cudaGetDeviceProperties(&properties, device), "cudaGetDeviceProperties");
  GpuDescription out;
  out.name = properties.name;
  out.sms = properties.multiProcessorCount;
  out.l2_bytes = static_cast<std::size_t>(properties.l2CacheSize);
  out.memory_bytes = properties.totalGlobalMem;
  out.compute_capability = properties.major * 10 + properties.minor;
  return out;
}

CopyResult measure_copy_kernel(int device, int sms, std::size_t bytes, int iters) {
  const char* who = "measure_copy_kernel";
  bytes = checked_bytes(bytes, who);
  check_iters(iters, who);
  const GpuDescription gpu = describe_gpu(device);
  if (sms < 1 || sms > gpu.sms) {
    fail(Errc::invalid_argument, std::string(who) + ": sms is " + std::to_string(sms) + "; " + gpu.name +
                                     " has " + std::to_string(gpu.sms));
  }
  detail::UseDevice use(device);
  const int per_sm = detail::copy_kernel_blocks_per_sm();
  if (per_sm != 1) {
    fail(Errc::internal, std::string(who) + ": " + std::to_string(per_sm) + " copy blocks fit on one SM of " +
                             gpu.name + "; the shared-memory reservation should allow exactly 1");
  }
  detail::DeviceMemory source(bytes, "the copy source"), target(bytes, "the copy target");
  fill(source, 0x5eed0000u + static_cast<unsigned>(sms));
  const std::string what = "the copy kernel on " + std::to_string(sms) + " SMs";
  const double ms = time_copies(source, target, bytes, iters, what, [&](cudaStream_t stream) {
    detail::launch_copy_kernel(source.get(), target.get(), bytes, sms, stream);
  });
  return {sms, gbps(bytes, ms), ms};
}

double measure_device_copy(int device, std::size_t bytes, int iters) {
  const char* who = "measure_device_copy";
  bytes = checked_bytes(bytes, who);
  check_iters(iters, who);
  detail::UseDevice use(device);
  detail::DeviceMemory source(bytes, "the copy source"), target(bytes, "the copy target");
  fill(source, 0x5eed1111u);
  const double ms =
      time_copies(source, target, bytes, iters, "cudaMemcpyAsync device to device", [&](cudaStream_t stream) {
        detail::check_cuda(
            cudaMemcpyAsync(target.get(), source.get(), bytes, cudaMemcpyDeviceToDevice, stream),
            "cudaMemcpyAsync device to device");
      });
  return gbps(bytes, ms);
}

struct CopyKernelLoad::Impl {
  Impl(int device_index, int blocks, std::size_t size)
      : device(device_index),
        sms(blocks),
        bytes(size),
        source(size, "the copy load's source"),
        target(size, "the copy load's target") {}
  int device;
  int sms;
  std::size_t bytes;
  detail::DeviceMemory source, target;
};

CopyKernelLoad::CopyKernelLoad(int device, int sms, std::size_t bytes) {
  bytes = checked_bytes(bytes, "CopyKernelLoad");
  const GpuDescription gpu = describe_gpu(device);
  if (sms < 1 || sms > gpu.sms) {
    fail(Errc::invalid_argument, "CopyKernelLoad: sms is " + std::to_string(sms) + "; " + gpu.name + " has " +
                                     std::to_string(gpu.sms));
  }
  detail::UseDevice use(device);
  impl_ = std::make_unique<Impl>(device, sms, bytes);
  fill(impl_->source, 0x5eed2222u);
}

CopyKernelLoad::~CopyKernelLoad() = default;

void CopyKernelLoad::operator()(void* stream) const {
  transport::detail::DeviceScope scope(impl_->device);
  detail::launch_copy_kernel(impl_->source.get(), impl_->target.get(), impl_->bytes, impl_->sms,
                             static_cast<cudaStream_t>(stream));
}

}  // namespace ferry::gpu_bench
