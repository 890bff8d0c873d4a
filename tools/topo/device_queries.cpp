#include "topo/device_queries.hpp"

#include <dlfcn.h>
#include <infiniband/verbs.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <memory>

namespace ferry::tools::topo {
namespace {

struct DeviceListDeleter {
  void operator()(ibv_device** list) const { ibv_free_device_list(list); }
};
struct ContextCloser {
  void operator()(ibv_context* context) const { ibv_close_device(context); }
};

// Lanes of ibv_port_attr::active_width.
int lanes(std::uint8_t width) {
  switch (width) {
    case 1:
      return 1;
    case 2:
      return 4;
    case 4:
      return 8;
    case 8:
      return 12;
    case 16:
      return 2;
    default:
      return 0;
  }
}

// Gb/s per lane and the name of ibv_port_attr::active_speed.
std::pair<double, const char*> lane_speed(std::uint8_t speed) {
  switch (speed) {
    case 1:
      return {2.5, "SDR"};
    case 2:
      return {5, "DDR"};
    case 4:
      return {10, "QDR"};
    case 8:
      return {10, "FDR10"};
    case 16:
      return {14, "FDR"};
    case 32:
      return {25, "EDR"};
    case 64:
      return {50, "HDR"};
    case 128:
      return {100, "NDR"};
    default:
      return {0, "?"};
  }
}

std::string gid_text(const ibv_gid& gid) {
  char text[48];
  const auto* b = gid.raw;
  std::snprintf(text, sizeof text, "%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x:%02x%02x",
                b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
                b[15]);
  return text;
}

NicPort query_port(ibv_context* context, int number) {
  NicPort port;
  port.port = number;
  ibv_port_attr attr{};
  if (ibv_query_port(context, static_cast<std::uint8_t>(number), &attr) != 0) {
    port.state = "unreadable";
    return port;
  }
  port.state = ibv_port_state_str(attr.state);
  const int width = lanes(attr.active_width);
  const auto [per_lane, name] = lane_speed(attr.active_speed);
  port.rate_gbps = width * per_lane;
  char rate[64];
  std::snprintf(rate, sizeof rate, "%g Gb/sec (%dX %s)", port.rate_gbps, width, name);
  port.rate = rate;
  port.link_layer = attr.link_layer == IBV_LINK_LAYER_ETHERNET ? "Ethernet" : "InfiniBand";
  ibv_gid gid{};
  if (ibv_query_gid(context, static_cast<std::uint8_t>(number), 0, &gid) == 0) port.gid = gid_text(gid);
  return port;
}

// NVML's C interface, as much of it as this file calls (nvml.h is not needed: the library is opened at run
// time). Return codes: 0 is NVML_SUCCESS.
using NvmlDevice = void*;
using NvmlInit = int (*)();
using NvmlShutdown = int (*)();
using NvmlHandleByBusId = int (*)(const char*, NvmlDevice*);
using NvmlNvLinkState = int (*)(NvmlDevice, unsigned, int*);
constexpr unsigned kMaxNvLinks = 18;  // NVML_NVLINK_MAX_LINKS

struct LibraryCloser {
  void operator()(void* handle) const { ::dlclose(handle); }
};

}  // namespace

std::string normalize_pci_address(const std::string& address) {
  std::string out;
  for (char c : address) out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  const auto colon = out.find(':');
  if (colon != std::string::npos && colon > 4) out.erase(0, colon - 4);  // 8-digit domain -> 4
  return out;
}

void apply_ibverbs(HostTopology& host) {
  int count = 0;
  std::unique_ptr<ibv_device*, DeviceListDeleter> list(ibv_get_device_list(&count));
  if (!list || count == 0) return;
  host.nic_source = "ibverbs";
  for (int i = 0; i < count; ++i) {
    const std::string name = ibv_get_device_name(list.get()[i]);
    auto nic = std::find_if(host.nics.begin(), host.nics.end(), [&](const Nic& n) { return n.name == name; });
    if (nic == host.nics.end()) {
      host.nics.push_back({name, "", {}, -1, {}});
      nic = host.nics.end() - 1;
    }
    std::unique_ptr<ibv_context, ContextCloser> context(ibv_open_device(list.get()[i]));
    ibv_device_attr attr{};
    if (!context || ibv_query_device(context.get(), &attr) != 0) continue;
    nic->ports.clear();
    for (int port = 1; port <= attr.phys_port_cnt; ++port)
      nic->ports.push_back(query_port(context.get(), port));
  }
  assign_nearest_nics(host);
}

void apply_nvml(HostTopology& host) {
  if (host.gpus.empty()) {
    host.nvml_status = "no GPU on the PCIe bus";
    return;
  }
  std::unique_ptr<void, LibraryCloser> library(::dlopen("libnvidia-ml.so.1", RTLD_NOW | RTLD_LOCAL));
  if (!library) {
    host.nvml_status = "libnvidia-ml.so.1 not found";
    return;
  }
  auto init = reinterpret_cast<NvmlInit>(::dlsym(library.get(), "nvmlInit_v2"));
  auto shutdown = reinterpret_cast<NvmlShutdown>(::dlsym(library.get(), "nvmlShutdown"));
  auto by_bus =
      reinterpret_cast<NvmlHandleByBusId>(::dlsym(library.get(), "nvmlDeviceGetHandleByPciBusId_v2"));
  auto link_state = reinterpret_cast<NvmlNvLinkState>(::dlsym(library.get(), "nvmlDeviceGetNvLinkState"));
  if (!init || !shutdown || !by_bus || !link_state) {
    host.nvml_status = "libnvidia-ml.so.1 lacks the NVLink queries";
    return;
  }
  if (int status = init(); status != 0) {
    host.nvml_status = "nvmlInit failed (" + std::to_string(status) + ")";
    return;
  }
  for (auto& gpu : host.gpus) {
    NvmlDevice device = nullptr;
    if (by_bus(gpu.pci_address.c_str(), &device) != 0) continue;
    int active = 0;
    for (unsigned link = 0; link < kMaxNvLinks; ++link) {
      int enabled = 0;
      if (link_state(device, link, &enabled) == 0 && enabled != 0) ++active;
    }
    gpu.nvlinks = active;
  }
  shutdown();
  host.nvml_status = "ok";
}

void apply_cuda_names(HostTopology& host, const std::vector<GpuInfo>& cuda_gpus) {
  for (auto& gpu : host.gpus) {
    for (const auto& info : cuda_gpus) {
      if (normalize_pci_address(info.pci_bus_id) == normalize_pci_address(gpu.pci_address))
        gpu.name = info.name;
    }
  }
}

}  // namespace ferry::tools::topo
