#include "ferry/transport/probe.hpp"

#include <infiniband/verbs.h>
#include <ucp/api/ucp.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>

#include "fabric/ibv_device_list.hpp"

namespace ferry::transport {
namespace {

struct ContextCloser {
  void operator()(ibv_context* context) const { ibv_close_device(context); }
};

void probe_rdma(FabricProbe& probe) {
  int count = 0;
  errno = 0;
  detail::DeviceList list(ibv_get_device_list(&count));
  if (!list) {
    // Without a kernel RDMA stack this returns NULL (errno ENOSYS): a normal state, not an error.
    probe.rdma_status = std::string("no RDMA device: ibv_get_device_list: ") +
                        (errno ? std::strerror(errno) : "returned no list");
    return;
  }
  for (int i = 0; i < count; ++i) {
    RdmaDevice device;
    device.name = ibv_get_device_name(list.get()[i]);
    device.transport = list.get()[i]->transport_type == IBV_TRANSPORT_IB ? "InfiniBand" : "other";
    std::unique_ptr<ibv_context, ContextCloser> context(ibv_open_device(list.get()[i]));
    ibv_device_attr attr{};
    if (context && ibv_query_device(context.get(), &attr) == 0) {
      device.ports = attr.phys_port_cnt;
      for (int port = 1; port <= attr.phys_port_cnt; ++port) {
        ibv_port_attr port_attr{};
        if (ibv_query_port(context.get(), static_cast<uint8_t>(port), &port_attr) == 0 &&
            port_attr.state == IBV_PORT_ACTIVE) {
          ++device.active_ports;
        }
      }
    }
    probe.rdma_devices.push_back(device);
  }
  if (probe.rdma_devices.empty()) probe.rdma_status = "no RDMA device: ibv_get_device_list found none";
}

}  // namespace

FabricProbe probe_fabrics() {
  FabricProbe probe;
  probe_rdma(probe);
  probe.ucx_version = ucp_get_version_string();
  probe.shm_available = access("/dev/shm", W_OK) == 0;
  return probe;
}

}  // namespace ferry::transport
