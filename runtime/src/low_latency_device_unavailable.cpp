// A LowLatencyBuffer on the GPU in a build without CUDA: refused with the reason.
#include "ferry/core/error.hpp"
#include "low_latency_device.hpp"

namespace ferry {

struct LowLatencyDevice::Impl {};

namespace {
[[noreturn]] void no_low_latency_on_gpu() {
  fail(Errc::unsupported,
       "LowLatencyBuffer(..., Device::cuda) in a build of ferry without CUDA (nvcc was not found)");
}
}  // namespace

LowLatencyDevice::LowLatencyDevice(Group&, const LowLatencyConfig&, const std::uint64_t*) {
  no_low_latency_on_gpu();
}
LowLatencyDevice::~LowLatencyDevice() = default;
std::byte* LowLatencyDevice::region() const {
  no_low_latency_on_gpu();
}
std::uint64_t* LowLatencyDevice::mask() const {
  no_low_latency_on_gpu();
}
const std::uint64_t* LowLatencyDevice::gone() const {
  no_low_latency_on_gpu();
}
Tensor LowLatencyDevice::tensor(std::initializer_list<std::int64_t>, DType, bool) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::begin_call() {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::end_captured_call(void*) noexcept {}
bool LowLatencyDevice::in_capture() {
  no_low_latency_on_gpu();
}
LowLatencyDevice::Capture LowLatencyDevice::check_stream(void*) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::follow(void*) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::lead(void*) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::copy(void*, const void*, std::size_t) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::fill(void*, int, std::size_t) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::dispatch_send(const kernels::protocol::LowLatencyDispatchPlan&) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::dispatch_receive(const kernels::protocol::LowLatencyDispatchPlan&) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::combine_send(const kernels::protocol::LowLatencyCombinePlan&) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::combine_receive(const kernels::protocol::LowLatencyCombinePlan&) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::acquire_staging(const kernels::protocol::LowLatencyContext&) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::add_dispatch_stats(const kernels::protocol::LowLatencyDispatchPlan&, std::int32_t*,
                                          std::int64_t*) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::add_combine_stats(const kernels::protocol::LowLatencyCombinePlan&, std::int64_t*) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::clean(const kernels::protocol::LowLatencyContext&, std::uint64_t) {
  no_low_latency_on_gpu();
}
Event LowLatencyDevice::event(bool) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::refuse_in_capture(const char*) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::raise_failures(bool) {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::set_mask(int, bool) {
  no_low_latency_on_gpu();
}
std::vector<std::uint64_t> LowLatencyDevice::read_mask() {
  no_low_latency_on_gpu();
}
void LowLatencyDevice::clear_mask() {
  no_low_latency_on_gpu();
}

}  // namespace ferry
