// SmPartition: two streams on disjoint SM sets through CUDA green contexts, reached through the runtime's
// driver entry points (so nothing links libcuda, which machines without a GPU driver lack), with plain
// streams as the fallback. A green split is trusted only after a probe kernel on each side stayed on as many
// SMs as that side was given.
#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <array>
#include <optional>
#include <string>

#include "bench/gpu/bench_kernels.hpp"
#include "bench/gpu/gpu_bench.hpp"
#include "bench/gpu/gpu_support.hpp"
#include "ferry/core/error.hpp"

namespace ferry::gpu_bench {

namespace {

constexpr int kCompute = 0;
constexpr int kComm = 1;

struct DriverApi {
  PFN_cuGetErrorName_v6000 get_error_name = nullptr;
  PFN_cuDeviceGet_v2000 device_get = nullptr;
  PFN_cuDeviceGetDevResource_v12040 get_dev_resource = nullptr;
  PFN_cuDevSmResourceSplitByCount_v12040 split_by_count = nullptr;
  PFN_cuDevResourceGenerateDesc_v12040 generate_desc = nullptr;
  PFN_cuGreenCtxCreate_v12040 green_ctx_create = nullptr;
  PFN_cuGreenCtxDestroy_v12040 green_ctx_destroy = nullptr;
  PFN_cuCtxFromGreenCtx_v12040 ctx_from_green = nullptr;
  PFN_cuGreenCtxStreamCreate_v12050 green_stream_create = nullptr;
  PFN_cuStreamDestroy_v4000 stream_destroy = nullptr;
  PFN_cuCtxPushCurrent_v4000 ctx_push = nullptr;
  PFN_cuCtxPopCurrent_v4000 ctx_pop = nullptr;
};

// Fills `api`; returns why not (empty when every entry point was found).
template <typename Function>
std::string find_entry_point(const char* symbol, unsigned version, Function& function) {
  void* pointer = nullptr;
  cudaDriverEntryPointQueryResult found = cudaDriverEntryPointSymbolNotFound;
  cudaError_t status = cudaGetDriverEntryPointByVersion(symbol, &pointer, version, cudaEnableDefault, &found);
  if (status != cudaSuccess)
    return std::string("cudaGetDriverEntryPointByVersion(") + symbol +
           "): " + transport::detail::describe_cuda(status);
  if (found != cudaDriverEntryPointSuccess || pointer == nullptr) {
    return std::string("the driver has no ") + symbol + " (version " + std::to_string(version) + ")";
  }
  function = reinterpret_cast<Function>(pointer);
  return {};
}

std::string load_driver_api(DriverApi& api) {
  std::string reason;
  auto find = [&](const char* symbol, unsigned version, auto& function) {
    if (reason.empty()) reason = find_entry_point(symbol, version, function);
  };
  find("cuGetErrorName", 6000, api.get_error_name);
  find("cuDeviceGet", 2000, api.device_get);
  find("cuDeviceGetDevResource", 12040, api.get_dev_resource);
  find("cuDevSmResourceSplitByCount", 12040, api.split_by_count);
  find("cuDevResourceGenerateDesc", 12040, api.generate_desc);
  find("cuGreenCtxCreate", 12040, api.green_ctx_create);
  find("cuGreenCtxDestroy", 12040, api.green_ctx_destroy);
  find("cuCtxFromGreenCtx", 12040, api.ctx_from_green);
  find("cuGreenCtxStreamCreate", 12050, api.green_stream_create);
  find("cuStreamDestroy", 4000, api.stream_destroy);
  find("cuCtxPushCurrent", 4000, api.ctx_push);
  find("cuCtxPopCurrent", 4000, api.ctx_pop);
  return reason;
}

}  // namespace

struct SmPartition::Impl {
  DriverApi api;
  bool green = false;
  std::string mode;
  std::array<int, 2> sms{};
  std::array<CUgreenCtx, 2> green_contexts{};
  std::array<CUcontext, 2> contexts{};
  std::array<CUstream, 2> green_streams{};
  std::array<std::optional<detail::Stream>, 2> plain_streams;

  ~Impl() { release_green(); }

  void release_green() {
    for (int side : {kCompute, kComm}) {
      if (green_streams[side] != nullptr) api.stream_destroy(green_streams[side]);
      if (green_contexts[side] != nullptr) api.green_ctx_destroy(green_contexts[side]);
      green_streams[side] = nullptr;
      green_contexts[side] = nullptr;
      contexts[side] = nullptr;
    }
    green = false;
  }

  // "<call>: <CUDA error name>" for a failed driver call.
  std::string driver_error(const char* call, CUresult result) const {
    const char* name = nullptr;
    if (api.get_error_name == nullptr || api.get_error_name(result, &name) != CUDA_SUCCESS) name = nullptr;
    return std::string(call) + ": " + (name != nullptr ? name : "CUresult " + std::to_string(result));
  }

  // Sets up the green split; returns why it could not (empty on success). Leaves nothing behind on failure.
  std::string try_green(int device, int comm_sms, int total_sms);
  // Runs the SM probe on each side; returns why the split does not hold (empty when it does).
  std::string probe(int total_sms);
};

std::string SmPartition::Impl::try_green(int device, int comm_sms, int total_sms) {
  std::string reason = load_driver_api(api);
  if (!reason.empty()) return reason;
  // Green contexts retain the primary context; have it exist first (the driver advises it).
  detail::check_cuda(cudaFree(nullptr), "cudaFree(nullptr) to start the primary context");
  CUdevice handle = 0;
  CUresult result = api.device_get(&handle, device);
  if (result != CUDA_SUCCESS) return driver_error("cuDeviceGet", result);
  CUdevResource all{};
  result = api.get_dev_resource(handle, &all, CU_DEV_RESOURCE_TYPE_SM);
  if (result != CUDA_SUCCESS) return driver_error("cuDeviceGetDevResource", result);
  const int alignment = static_cast<int>(std::max(1u, all.sm.smCoscheduledAlignment));
  const int minimum = static_cast<int>(all.sm.minSmPartitionSize);
  // The compute side is the split's group, rounded down to the alignment so the rest (comm) keeps at least
  // comm_sms.
  const int compute_request = (static_cast<int>(all.sm.smCount) - comm_sms) / alignment * alignment;
  if (compute_request < std::max(minimum, 1)) {
    return "comm_sms " + std::to_string(comm_sms) + " leaves fewer SMs than a green partition's minimum (" +
           std::to_string(minimum) + ")";
  }
  std::array<CUdevResource, 2> parts{};
  unsigned groups = 1;
  result = api.split_by_count(&parts[kCompute], &groups, &all, &parts[kComm], 0,
                              static_cast<unsigned>(compute_request));
  if (result != CUDA_SUCCESS) return driver_error("cuDevSmResourceSplitByCount", result);
  if (groups != 1) return "cuDevSmResourceSplitByCount made " + std::to_string(groups) + " groups, not 1";
  for (int side : {kCompute, kComm}) {
    sms[side] = static_cast<int>(parts[side].sm.smCount);
    CUdevResourceDesc description = nullptr;
    result = api.generate_desc(&description, &parts[side], 1);
    if (result == CUDA_SUCCESS) {
      result = api.green_ctx_create(&green_contexts[side], description, handle, CU_GREEN_CTX_DEFAULT_STREAM);
    }
    if (result == CUDA_SUCCESS) result = api.ctx_from_green(&contexts[side], green_contexts[side]);
    if (result == CUDA_SUCCESS) {
      result = api.green_stream_create(&green_streams[side], green_contexts[side], CU_STREAM_NON_BLOCKING, 0);
    }
    if (result != CUDA_SUCCESS) {
      reason = driver_error(side == kCompute ? "green context (compute side)" : "green context (comm side)",
                            result);
      release_green();
      return reason;
    }
  }
  if (sms[kComm] < comm_sms) {
    reason = "the green split left " + std::to_string(sms[kComm]) + " SMs for comm, fewer than " +
             std::to_string(comm_sms);
    release_green();
    return reason;
  }
  green = true;
  reason = probe(total_sms);
  if (!reason.empty()) release_green();
  return reason;
}

std::string SmPartition::Impl::probe(int total_sms) {
  // Allocated in the primary context, as the caller's buffers are: the probe also shows that kernels in the
  // green contexts can use them.
  const int blocks = 4 * total_sms;
  detail::DeviceMemory scratch(sizeof(int) * static_cast<std::size_t>(blocks), "the SM probe");
  for (int side : {kCompute, kComm}) {
    const char* name = side == kCompute ? "compute" : "comm";
    CUresult result = api.ctx_push(contexts[side]);
    if (result != CUDA_SUCCESS) return driver_error("cuCtxPushCurrent", result);
    std::string reason;
    try {
      const auto reached = detail::sms_reached(blocks, green_streams[side], scratch.get());
      if (static_cast<int>(reached.size()) > sms[side]) {
        reason = std::string("green contexts did not confine the ") + name + " side: its probe reached " +
                 std::to_string(reached.size()) + " SMs, more than its " + std::to_string(sms[side]);
      }
    } catch (const Error& e) {
      reason = std::string("the SM probe on the ") + name + " side failed: " + e.what();
    }
    CUcontext popped = nullptr;
    api.ctx_pop(&popped);
    if (!reason.empty()) return reason;
  }
  return {};
}

SmPartition::SmPartition(int device, int comm_sms, bool allow_green) : impl_(std::make_unique<Impl>()) {
  const GpuDescription gpu = describe_gpu(device);
  if (comm_sms < 1 || comm_sms >= gpu.sms) {
    fail(Errc::invalid_argument, "SmPartition: comm_sms is " + std::to_string(comm_sms) + "; " + gpu.name +
                                     " has " + std::to_string(gpu.sms) + " SMs, so 1 to " +
                                     std::to_string(gpu.sms - 1));
  }
  detail::UseDevice use(device);
  std::string reason =
      allow_green ? impl_->try_green(device, comm_sms, gpu.sms) : "green contexts not asked for";
  if (reason.empty()) {
    impl_->mode = "green contexts: compute " + std::to_string(impl_->sms[kCompute]) + " SMs, comm " +
                  std::to_string(impl_->sms[kComm]) + " SMs";
    return;
  }
  impl_->plain_streams[kCompute].emplace();
  impl_->plain_streams[kComm].emplace();
  impl_->sms = {gpu.sms, gpu.sms};
  impl_->mode = "plain streams (all " + std::to_string(gpu.sms) + " SMs shared): " + reason;
}

SmPartition::~SmPartition() = default;

void* SmPartition::compute_stream() const {
  return impl_->green ? static_cast<void*>(impl_->green_streams[kCompute])
                      : static_cast<void*>(impl_->plain_streams[kCompute]->get());
}

void* SmPartition::comm_stream() const {
  return impl_->green ? static_cast<void*>(impl_->green_streams[kComm])
                      : static_cast<void*>(impl_->plain_streams[kComm]->get());
}

int SmPartition::compute_sms() const {
  return impl_->sms[kCompute];
}

int SmPartition::comm_sms() const {
  return impl_->sms[kComm];
}

bool SmPartition::green() const {
  return impl_->green;
}

const std::string& SmPartition::mode() const {
  return impl_->mode;
}

SmPartition::Enter::Enter(const SmPartition& partition, bool comm_side) {
  const Impl& impl = *partition.impl_;
  if (!impl.green) return;
  CUresult result = impl.api.ctx_push(impl.contexts[comm_side ? kComm : kCompute]);
  if (result != CUDA_SUCCESS) fail(Errc::system, impl.driver_error("cuCtxPushCurrent", result));
  pushed_ = &partition;
}

SmPartition::Enter::~Enter() {
  if (pushed_ == nullptr) return;
  CUcontext popped = nullptr;
  pushed_->impl_->api.ctx_pop(&popped);
}

}  // namespace ferry::gpu_bench
