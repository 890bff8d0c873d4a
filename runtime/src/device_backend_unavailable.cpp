// A CUDA Buffer in a build without CUDA: refused with the reason.
#include "device_backend.hpp"
#include "ferry/core/error.hpp"

namespace ferry {

struct DeviceBackend::Impl {};

namespace {
[[noreturn]] void no_cuda() {
  fail(Errc::unsupported, "Buffer(..., Device::cuda) in a build of ferry without CUDA (nvcc was not found)");
}
}  // namespace

DeviceBackend::DeviceBackend(Group&, const Config&, const kernels::protocol::BufferLayout&, std::size_t) {
  no_cuda();
}
DeviceBackend::~DeviceBackend() = default;
Layout DeviceBackend::layout(const TensorView&, std::int64_t, int, void*) {
  no_cuda();
}
Pending<DispatchResult> DeviceBackend::dispatch(const DispatchInputs&, const Layout&, const DispatchOptions&,
                                                const kernels::host::OpSettings&) {
  no_cuda();
}
Pending<DispatchResult> DeviceBackend::dispatch(const TensorView&, const TensorView&, const Handle&,
                                                const DispatchOptions&, const kernels::host::OpSettings&) {
  no_cuda();
}
Pending<CombineResult> DeviceBackend::combine(const TensorView&, const Handle&, const CombineOptions&,
                                              const kernels::host::OpSettings&) {
  no_cuda();
}
BufferTraffic DeviceBackend::traffic() const {
  no_cuda();
}

}  // namespace ferry
