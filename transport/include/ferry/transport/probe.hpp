// What this machine offers the transport floor: RDMA devices, the UCX library, POSIX shared memory.
#pragma once

#include <string>
#include <vector>

namespace ferry::transport {

struct RdmaDevice {
  std::string name;       // e.g. mlx5_0
  std::string transport;  // "InfiniBand", "iWARP", ...
  int ports = 0;
  int active_ports = 0;
};

struct FabricProbe {
  std::vector<RdmaDevice> rdma_devices;
  std::string rdma_status;  // why the list is empty, when it is ("no RDMA device: ibv_get_device_list: ...")
  std::string ucx_version;  // the UCX library ferry runs against
  bool shm_available = false;  // /dev/shm usable for intra-node peer memory
};

FabricProbe probe_fabrics();

}  // namespace ferry::transport
