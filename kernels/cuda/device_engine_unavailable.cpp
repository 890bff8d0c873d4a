// The CUDA executor's entry points in a build without CUDA: they say so instead of failing to link.
#include "ferry/core/error.hpp"
#include "ferry/kernels/cuda/device_engine.hpp"

namespace ferry::kernels::cuda {

namespace {
[[noreturn]] void no_cuda() {
  fail(Errc::unsupported, "this build of ferry has no CUDA executor (nvcc was not found)");
}
}  // namespace

struct DeviceRecord {};
struct DeviceEngine::Impl {};

bool built_with_cuda() {
  return false;
}
std::string gpu_unavailable_reason() {
  return "this build has no CUDA";
}
int device_rings_per_rank(const protocol::Topology&, const DeviceOptions&) {
  no_cuda();
}

DeviceEngine::DeviceEngine(const protocol::BufferLayout&, std::vector<DeviceRank>, const DeviceOptions&) {
  no_cuda();
}
DeviceEngine::~DeviceEngine() = default;
std::vector<DeviceDispatchResult> DeviceEngine::dispatch(const DeviceDispatchShape&,
                                                         const std::vector<DeviceDispatchInput>&,
                                                         const std::vector<std::shared_ptr<DeviceRecord>>*,
                                                         void*) {
  no_cuda();
}
void DeviceEngine::combine(const DeviceCombineShape&, const std::vector<DeviceCombineInput>&, void*) {
  no_cuda();
}
void DeviceEngine::finish(void*, std::vector<DeviceDispatchResult>*) {
  no_cuda();
}
std::vector<DeviceTraffic> DeviceEngine::traffic() const {
  no_cuda();
}
int DeviceEngine::num_ranks() const {
  return 0;
}
std::vector<std::int32_t> device_recv_src_rank(const DeviceRecord&) {
  no_cuda();
}
std::vector<std::int32_t> device_recv_src_token(const DeviceRecord&) {
  no_cuda();
}
std::int64_t device_num_recv(const DeviceRecord&) {
  no_cuda();
}

}  // namespace ferry::kernels::cuda
