// Live refinements of a HostTopology read from sysfs: ibverbs for the RDMA ports (what the driver reports
// now), NVML for NVLink, CUDA for GPU names. Each says what it did, or why it could not, in the host's status
// fields; none throws. Neither ibverbs nor NVML finds a device on a machine without them (this one): the
// parsing and warnings are tested on fake sysfs trees instead, and this file has only run empty-handed.
#pragma once

#include <vector>

#include "ferry/devices.hpp"
#include "topo/host_topology.hpp"

namespace ferry::tools::topo {

// Ports of every device ibv_get_device_list() returns (state, rate from width x speed, link layer, GID 0);
// devices sysfs did not show are added without a PCI place. Sets nic_source to "ibverbs" when it found any.
void apply_ibverbs(HostTopology& host);

// Active NVLinks per GPU through libnvidia-ml.so.1, opened with dlopen (ferry does not link NVML); leaves
// nvlinks at -1 and says why in nvml_status when the library or a GPU is missing.
void apply_nvml(HostTopology& host);

// GPU names from the CUDA runtime's view (probe_machine), matched by PCI address.
void apply_cuda_names(HostTopology& host, const std::vector<GpuInfo>& cuda_gpus);

// "00000000:18:00.0" and "0000:18:00.0" -> "0000:18:00.0" (lower case).
std::string normalize_pci_address(const std::string& address);

}  // namespace ferry::tools::topo
