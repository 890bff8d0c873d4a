// What this process can see: GPUs, RDMA NICs, and the fabrics ferry can use with them.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

namespace ferry {

struct GpuInfo {
  int index = 0;
  std::string name;
  std::string pci_bus_id;
  std::size_t memory_bytes = 0;
  int sm_count = 0;
  int compute_capability = 0;  // major * 10 + minor
};

struct NicInfo {
  std::string name;
  std::string transport;
  int ports = 0;
  int active_ports = 0;
};

struct MachineInfo {
  std::vector<GpuInfo> gpus;
  std::string gpu_status;  // why `gpus` is empty, when it is
  std::vector<NicInfo> nics;
  std::string nic_status;  // why `nics` is empty, when it is
  std::string ucx_version;
  bool shm_available = false;
  std::vector<std::string> fabrics;  // usable now, in preference order: verbs, ucx, shm, cuda_ipc
};

MachineInfo probe_machine();

}  // namespace ferry
