#include "ferry/devices.hpp"

#include "ferry/transport/probe.hpp"

#ifdef FERRY_HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

namespace ferry {
namespace {

void probe_gpus(MachineInfo& info) {
#ifdef FERRY_HAVE_CUDA
  int count = 0;
  // Without a driver this returns cudaErrorInsufficientDriver and leaves `count` alone: check the code.
  cudaError_t status = cudaGetDeviceCount(&count);
  if (status != cudaSuccess) {
    info.gpu_status = std::string("no GPU: cudaGetDeviceCount: ") + cudaGetErrorName(status) + " (" +
                      cudaGetErrorString(status) + ")";
    return;
  }
  for (int i = 0; i < count; ++i) {
    cudaDeviceProp prop{};
    if (cudaGetDeviceProperties(&prop, i) != cudaSuccess) continue;
    GpuInfo gpu;
    gpu.index = i;
    gpu.name = prop.name;
    char bus[32] = {};
    if (cudaDeviceGetPCIBusId(bus, sizeof(bus), i) == cudaSuccess) gpu.pci_bus_id = bus;
    gpu.memory_bytes = prop.totalGlobalMem;
    gpu.sm_count = prop.multiProcessorCount;
    gpu.compute_capability = prop.major * 10 + prop.minor;
    info.gpus.push_back(gpu);
  }
  if (info.gpus.empty()) info.gpu_status = "no GPU: the CUDA driver reports none";
#else
  info.gpu_status = "no GPU support: ferry was built without CUDA";
#endif
}

}  // namespace

MachineInfo probe_machine() {
  MachineInfo info;
  probe_gpus(info);
  auto fabrics = transport::probe_fabrics();
  for (const auto& device : fabrics.rdma_devices) {
    info.nics.push_back({device.name, device.transport, device.ports, device.active_ports});
  }
  info.nic_status = fabrics.rdma_status;
  info.ucx_version = fabrics.ucx_version;
  info.shm_available = fabrics.shm_available;
  if (!info.nics.empty()) info.fabrics.push_back("verbs");
  info.fabrics.push_back("ucx");
  if (info.shm_available) info.fabrics.push_back("shm");
  if (!info.gpus.empty()) info.fabrics.push_back("cuda_ipc");
  return info;
}

}  // namespace ferry
