#include "ferry/transport/cuda_check.hpp"

#include <cuda.h>

#include <type_traits>

#include "ferry/core/error.hpp"

namespace ferry::transport::detail {

std::string describe_cuda(cudaError_t status) {
  return std::string(cudaGetErrorName(status)) + " (" + cudaGetErrorString(status) + ")";
}

void check_cuda(cudaError_t status, const std::string& what) {
  if (status == cudaSuccess) return;
  forget_last_error();
  fail(Errc::system, what + ": " + describe_cuda(status));
}

int visible_gpus(std::string& reason) {
  int count = 0;
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    reason = "no usable GPU (cudaGetDeviceCount: " + describe_cuda(status) + ")";
    return 0;
  }
  if (count == 0) reason = "no usable GPU (cudaGetDeviceCount: 0 devices)";
  return count;
}

namespace {

// The driver's context entry points, through the runtime (nothing links libcuda). Found once per process.
struct ContextApi {
  CUresult (*get_current)(CUcontext*) = nullptr;
  CUresult (*set_current)(CUcontext) = nullptr;
  bool present() const { return get_current != nullptr && set_current != nullptr; }
};

const ContextApi& context_api() {
  static const ContextApi api = [] {
    ContextApi found;
    auto find = [](const char* symbol, auto& function) {
      void* pointer = nullptr;
      cudaDriverEntryPointQueryResult result = cudaDriverEntryPointSymbolNotFound;
      if (cudaGetDriverEntryPointByVersion(symbol, &pointer, 4000, cudaEnableDefault, &result) ==
              cudaSuccess &&
          result == cudaDriverEntryPointSuccess) {
        function = reinterpret_cast<std::remove_reference_t<decltype(function)>>(pointer);
      }
    };
    find("cuCtxGetCurrent", found.get_current);
    find("cuCtxSetCurrent", found.set_current);
    return found;
  }();
  return api;
}

}  // namespace

cudaError_t DeviceScope::enter(int device) noexcept {
  const ContextApi& api = context_api();
  int current = -1;
  if (api.present()) {
    CUcontext context = nullptr;
    if (api.get_current(&context) == CUDA_SUCCESS && context != nullptr &&
        cudaGetDevice(&current) == cudaSuccess && current == device) {
      return cudaSuccess;  // bound to this device already: nothing to undo
    }
    const cudaError_t status = cudaSetDevice(device);
    if (status != cudaSuccess) return status;
    context_ = context;
    restore_ = true;
    return cudaSuccess;
  }
  if (cudaError_t status = cudaGetDevice(&current); status != cudaSuccess) return status;
  if (current == device) return cudaSuccess;
  const cudaError_t status = cudaSetDevice(device);
  if (status != cudaSuccess) return status;
  previous_ = current;
  restore_ = true;
  return cudaSuccess;
}

DeviceScope::DeviceScope(int device) {
  check_cuda(enter(device), "cudaSetDevice(" + std::to_string(device) + ")");
}

DeviceScope::DeviceScope(int device, std::nothrow_t) noexcept {
  enter(device);
}

DeviceScope::~DeviceScope() {
  if (!restore_) return;
  const ContextApi& api = context_api();
  if (api.present()) {
    api.set_current(static_cast<CUcontext>(context_));  // none, or the context the thread had
  } else if (previous_ >= 0) {
    cudaSetDevice(previous_);
  }
}

DeviceEvent::DeviceEvent(int device) : device_(device) {
  DeviceScope scope(device);
  check_cuda(cudaEventCreateWithFlags(&event_, cudaEventDisableTiming), "cudaEventCreateWithFlags");
}

DeviceEvent::~DeviceEvent() {
  DeviceScope scope(device_, std::nothrow);
  cudaEventDestroy(event_);
}

void DeviceEvent::record(cudaStream_t stream) {
  DeviceScope scope(device_);
  check_cuda(cudaEventRecord(event_, stream), "cudaEventRecord");
}

namespace {

// The user object's destructor: flags, and frees the flag's own holder; no CUDA call.
void CUDART_CB graph_let_go(void* flag) {
  auto* released = static_cast<std::shared_ptr<std::atomic<bool>>*>(flag);
  (*released)->store(true, std::memory_order_release);
  delete released;
}

}  // namespace

std::shared_ptr<const std::atomic<bool>> flag_when_graph_lets_go(cudaGraph_t graph) {
  auto released = std::make_shared<std::atomic<bool>>(false);
  auto holder = std::make_unique<std::shared_ptr<std::atomic<bool>>>(released);
  cudaUserObject_t object = nullptr;
  if (cudaUserObjectCreate(&object, holder.get(), graph_let_go, 1, cudaUserObjectNoDestructorSync) !=
      cudaSuccess) {
    forget_last_error();
    return nullptr;
  }
  holder.release();  // the user object's now: graph_let_go deletes it
  if (cudaGraphRetainUserObject(graph, object, 1, cudaGraphUserObjectMove) != cudaSuccess) {
    forget_last_error();
    cudaUserObjectRelease(object, 1);  // flags a hold nobody watches
    return nullptr;
  }
  return released;
}

bool DeviceEvent::passed() const {
  DeviceScope scope(device_, std::nothrow);
  const RelaxedCaptureMode relaxed;
  const cudaError_t status = cudaEventQuery(event_);
  if (status != cudaSuccess && status != cudaErrorNotReady) forget_last_error();
  // An event last recorded while its stream was captured into a CUDA graph marks a point of the graph, not of
  // the stream: it never passes (the work it stands for runs at every launch of the graph).
  return status != cudaErrorNotReady && status != cudaErrorCapturedEvent;
}

}  // namespace ferry::transport::detail
