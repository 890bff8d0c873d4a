// The low-latency mode's CUDA executor in a build without CUDA: it says so instead of failing to link.
#include "ferry/core/error.hpp"
#include "ferry/kernels/cuda/low_latency_engine.hpp"

namespace ferry::kernels::cuda {

namespace {
[[noreturn]] void no_low_latency_cuda() {
  fail(Errc::unsupported, "this build of ferry has no CUDA executor (nvcc was not found)");
}
}  // namespace

struct LowLatencyDeviceEngine::Impl {};
struct LowLatencyVirtualCluster::Impl {};

LowLatencyDeviceEngine::LowLatencyDeviceEngine(const protocol::Topology&, std::vector<LowLatencyDeviceRank>,
                                               const LowLatencyDeviceOptions&) {
  no_low_latency_cuda();
}
LowLatencyDeviceEngine::~LowLatencyDeviceEngine() = default;
int LowLatencyDeviceEngine::num_ranks() const {
  no_low_latency_cuda();
}
void LowLatencyDeviceEngine::dispatch_send(const std::vector<protocol::LowLatencyDispatchPlan>&, void*) {
  no_low_latency_cuda();
}
void LowLatencyDeviceEngine::dispatch_receive(const std::vector<protocol::LowLatencyDispatchPlan>&, void*) {
  no_low_latency_cuda();
}
void LowLatencyDeviceEngine::combine_send(const std::vector<protocol::LowLatencyCombinePlan>&, void*) {
  no_low_latency_cuda();
}
void LowLatencyDeviceEngine::combine_receive(const std::vector<protocol::LowLatencyCombinePlan>&, void*) {
  no_low_latency_cuda();
}
void LowLatencyDeviceEngine::acquire_staging(const std::vector<protocol::LowLatencyContext>&, void*) {
  no_low_latency_cuda();
}
void LowLatencyDeviceEngine::add_dispatch_stats(const protocol::LowLatencyDispatchPlan&, std::int32_t*,
                                                std::int64_t*, void*) {
  no_low_latency_cuda();
}
void LowLatencyDeviceEngine::add_combine_stats(const protocol::LowLatencyCombinePlan&, std::int64_t*, void*) {
  no_low_latency_cuda();
}
void LowLatencyDeviceEngine::clean(const std::vector<protocol::LowLatencyContext>&, std::uint64_t, void*) {
  no_low_latency_cuda();
}
void LowLatencyDeviceEngine::finish(void*) {
  no_low_latency_cuda();
}
void LowLatencyDeviceEngine::raise_failures() {
  no_low_latency_cuda();
}

LowLatencyVirtualCluster::LowLatencyVirtualCluster(int, int, std::size_t, const LowLatencyDeviceOptions&) {
  no_low_latency_cuda();
}
LowLatencyVirtualCluster::~LowLatencyVirtualCluster() = default;
int LowLatencyVirtualCluster::num_ranks() const {
  no_low_latency_cuda();
}
std::byte* LowLatencyVirtualCluster::region(int) const {
  no_low_latency_cuda();
}
LowLatencyDeviceEngine& LowLatencyVirtualCluster::engine() {
  no_low_latency_cuda();
}

}  // namespace ferry::kernels::cuda
