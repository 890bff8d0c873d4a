// The GPU benchmarks in builds without CUDA: every entry point says why it cannot run.
#include "bench/gpu/gpu_bench.hpp"
#include "ferry/core/error.hpp"

namespace ferry::gpu_bench {

namespace {

[[noreturn]] void no_cuda() {
  fail(Errc::unsupported, "GPU benchmarks: this build of ferry has no CUDA (configure with nvcc present)");
}

}  // namespace

GpuDescription describe_gpu(int) {
  no_cuda();
}

CopyResult measure_copy_kernel(int, int, std::size_t, int) {
  no_cuda();
}

double measure_device_copy(int, std::size_t, int) {
  no_cuda();
}

struct CopyKernelLoad::Impl {};
CopyKernelLoad::CopyKernelLoad(int, int, std::size_t) {
  no_cuda();
}
CopyKernelLoad::~CopyKernelLoad() = default;
void CopyKernelLoad::operator()(void*) const {
  no_cuda();
}

struct SmPartition::Impl {
  std::string mode;
};
SmPartition::SmPartition(int, int, bool) {
  no_cuda();
}
SmPartition::~SmPartition() = default;
void* SmPartition::compute_stream() const {
  no_cuda();
}
void* SmPartition::comm_stream() const {
  no_cuda();
}
int SmPartition::compute_sms() const {
  no_cuda();
}
int SmPartition::comm_sms() const {
  no_cuda();
}
bool SmPartition::green() const {
  no_cuda();
}
const std::string& SmPartition::mode() const {
  no_cuda();
}
SmPartition::Enter::Enter(const SmPartition&, bool) {
  no_cuda();
}
SmPartition::Enter::~Enter() = default;

GemmResult measure_gemm_overlap(int, int, const std::function<void(void*)>&, const GemmOptions&) {
  no_cuda();
}

}  // namespace ferry::gpu_bench
