// One host's devices as `ferry topo` reports them: RDMA NICs and their ports (state, rate, GID), GPUs, where
// each sits on the PCIe tree and which NUMA node it belongs to, which NIC is nearest each GPU, NVLink, and
// whether GPUDirect RDMA is loaded. Read from sysfs (any root, so that tests use fake trees), then refined by
// ibverbs and NVML where they find devices (ibverbs_query.cpp, nvml_query.cpp).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace ferry::tools::topo {

struct NicPort {
  int port = 1;
  std::string state;       // "ACTIVE", "DOWN", "INIT", ... (sysfs's "4: ACTIVE" without the number)
  std::string rate;        // "200 Gb/sec (4X HDR)"
  double rate_gbps = 0;    // its number
  std::string link_layer;  // "InfiniBand", "Ethernet"
  std::string gid;         // GID index 0
};

struct Nic {
  std::string name;                   // mlx5_0
  std::string pci_address;            // 0000:17:00.0
  std::vector<std::string> pci_path;  // pci0000:16, 0000:16:02.0, ..., 0000:17:00.0 (host bridge first)
  int numa_node = -1;
  std::vector<NicPort> ports;
};

struct Gpu {
  std::string pci_address;
  std::vector<std::string> pci_path;
  int numa_node = -1;
  std::string name;          // from CUDA or NVML when they run, else "NVIDIA device 0x2330"
  int nvlinks = -1;          // active NVLinks (NVML), -1 unknown
  std::string nearest_nic;   // filled by assign_nearest_nics()
  std::string nic_relation;  // to_string(PciRelation) of that NIC
};

struct HostTopology {
  std::vector<Nic> nics;
  std::string nic_source = "sysfs";  // "ibverbs" when ibverbs listed the devices
  std::vector<Gpu> gpus;
  std::string nvml_status = "not tried";
  std::string gpudirect_module;  // "nvidia_peermem" or "nv_peer_mem" when loaded, else ""
};

// How far apart two PCIe devices are, nearest first (nvidia-smi topo's PIX/PXB/PHB/NODE/SYS, in words).
enum class PciRelation { same_switch, same_root_port, same_host_bridge, same_numa_node, across_sockets };
const char* to_string(PciRelation relation);
PciRelation relation(const std::vector<std::string>& path_a, int numa_a,
                     const std::vector<std::string>& path_b, int numa_b);

// Reads `root` as /sys: class/infiniband/*, bus/pci/devices/* (NVIDIA display/3D controllers), module/*.
// Missing directories mean no such devices; never throws for an odd tree (unreadable values stay empty).
HostTopology read_sysfs(const std::string& root);

// Each GPU's nearest NIC (ties: the NIC listed first).
void assign_nearest_nics(HostTopology& host);

nlohmann::json to_json(const HostTopology& host);
HostTopology host_from_json(const nlohmann::json& json);

// "200 Gb/sec (4X HDR)" -> 200; 0 when there is no number.
double parse_rate_gbps(const std::string& rate);

}  // namespace ferry::tools::topo
