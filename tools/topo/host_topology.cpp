#include "topo/host_topology.hpp"

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>

namespace ferry::tools::topo {
namespace {

namespace fs = std::filesystem;

std::string read_line(const fs::path& path) {
  std::ifstream in(path);
  std::string line;
  std::getline(in, line);
  while (!line.empty() && (line.back() == '\n' || line.back() == ' ' || line.back() == '\r')) line.pop_back();
  return line;
}

int read_numa(const fs::path& device) {
  const std::string text = read_line(device / "numa_node");
  return text.empty() ? -1 : std::atoi(text.c_str());
}

// The device's place on the PCIe tree: its canonical path's components from the host bridge ("pci0000:16")
// down to the device itself.
std::vector<std::string> pci_path_of(const fs::path& device) {
  std::error_code error;
  const fs::path real = fs::canonical(device, error);
  std::vector<std::string> path;
  if (error) return path;
  for (const auto& part : real) {
    const std::string name = part.string();
    if (name.rfind("pci", 0) == 0 && name.find(':') != std::string::npos) path.clear();  // the host bridge
    if (!path.empty() || name.rfind("pci", 0) == 0) path.push_back(name);
  }
  return path;
}

std::vector<fs::path> entries(const fs::path& dir) {
  std::vector<fs::path> out;
  std::error_code error;
  for (const auto& entry : fs::directory_iterator(dir, error)) out.push_back(entry.path());
  std::sort(out.begin(), out.end());
  return out;
}

Nic read_nic(const fs::path& dir) {
  Nic nic;
  nic.name = dir.filename().string();
  const fs::path device = dir / "device";
  nic.pci_path = pci_path_of(device);
  if (!nic.pci_path.empty()) nic.pci_address = nic.pci_path.back();
  nic.numa_node = read_numa(device);
  for (const auto& port_dir : entries(dir / "ports")) {
    NicPort port;
    port.port = std::atoi(port_dir.filename().c_str());
    std::string state = read_line(port_dir / "state");  // "4: ACTIVE"
    if (auto colon = state.find(": "); colon != std::string::npos) state = state.substr(colon + 2);
    port.state = state;
    port.rate = read_line(port_dir / "rate");
    port.rate_gbps = parse_rate_gbps(port.rate);
    port.link_layer = read_line(port_dir / "link_layer");
    port.gid = read_line(port_dir / "gids" / "0");
    nic.ports.push_back(port);
  }
  return nic;
}

bool is_nvidia_gpu(const fs::path& device) {
  const std::string vendor = read_line(device / "vendor");
  const std::string pci_class = read_line(device / "class");
  // 0x0300xx: VGA controller, 0x0302xx: 3D controller (data-center GPUs).
  return vendor == "0x10de" && (pci_class.rfind("0x0300", 0) == 0 || pci_class.rfind("0x0302", 0) == 0);
}

}  // namespace

const char* to_string(PciRelation relation) {
  switch (relation) {
    case PciRelation::same_switch:
      return "same PCIe switch";
    case PciRelation::same_root_port:
      return "same root port";
    case PciRelation::same_host_bridge:
      return "same host bridge";
    case PciRelation::same_numa_node:
      return "same NUMA node";
    case PciRelation::across_sockets:
      return "across sockets";
  }
  return "?";
}

PciRelation relation(const std::vector<std::string>& a, int numa_a, const std::vector<std::string>& b,
                     int numa_b) {
  std::size_t common = 0;
  while (common < a.size() && common < b.size() && a[common] == b[common]) ++common;
  // Path components: [0] host bridge, [1] root port, [2...] switch ports and the device.
  if (common >= 3) return PciRelation::same_switch;
  if (common == 2) return PciRelation::same_root_port;
  if (common == 1) return PciRelation::same_host_bridge;
  if (numa_a >= 0 && numa_a == numa_b) return PciRelation::same_numa_node;
  return PciRelation::across_sockets;
}

double parse_rate_gbps(const std::string& rate) {
  return std::strtod(rate.c_str(), nullptr);
}

HostTopology read_sysfs(const std::string& root) {
  HostTopology host;
  const fs::path sys(root);
  for (const auto& dir : entries(sys / "class" / "infiniband")) host.nics.push_back(read_nic(dir));
  for (const auto& device : entries(sys / "bus" / "pci" / "devices")) {
    if (!is_nvidia_gpu(device)) continue;
    Gpu gpu;
    gpu.pci_address = device.filename().string();
    gpu.pci_path = pci_path_of(device);
    gpu.numa_node = read_numa(device);
    gpu.name = "NVIDIA device " + read_line(device / "device");
    host.gpus.push_back(gpu);
  }
  for (const char* module : {"nvidia_peermem", "nv_peer_mem"}) {
    std::error_code error;
    if (fs::exists(sys / "module" / module, error)) host.gpudirect_module = module;
  }
  assign_nearest_nics(host);
  return host;
}

void assign_nearest_nics(HostTopology& host) {
  for (auto& gpu : host.gpus) {
    gpu.nearest_nic.clear();
    gpu.nic_relation.clear();
    PciRelation best = PciRelation::across_sockets;
    for (const auto& nic : host.nics) {
      const PciRelation r = relation(gpu.pci_path, gpu.numa_node, nic.pci_path, nic.numa_node);
      if (gpu.nearest_nic.empty() || r < best) {
        best = r;
        gpu.nearest_nic = nic.name;
        gpu.nic_relation = to_string(r);
      }
    }
  }
}

nlohmann::json to_json(const HostTopology& host) {
  nlohmann::json nics = nlohmann::json::array();
  for (const auto& nic : host.nics) {
    nlohmann::json ports = nlohmann::json::array();
    for (const auto& p : nic.ports) {
      ports.push_back({{"port", p.port},
                       {"state", p.state},
                       {"rate", p.rate},
                       {"rate_gbps", p.rate_gbps},
                       {"link_layer", p.link_layer},
                       {"gid", p.gid}});
    }
    nics.push_back({{"name", nic.name},
                    {"pci_address", nic.pci_address},
                    {"pci_path", nic.pci_path},
                    {"numa_node", nic.numa_node},
                    {"ports", ports}});
  }
  nlohmann::json gpus = nlohmann::json::array();
  for (const auto& g : host.gpus) {
    gpus.push_back({{"pci_address", g.pci_address},
                    {"pci_path", g.pci_path},
                    {"numa_node", g.numa_node},
                    {"name", g.name},
                    {"nvlinks", g.nvlinks},
                    {"nearest_nic", g.nearest_nic},
                    {"nic_relation", g.nic_relation}});
  }
  return {{"nics", nics},
          {"nic_source", host.nic_source},
          {"gpus", gpus},
          {"nvml_status", host.nvml_status},
          {"gpudirect_module", host.gpudirect_module}};
}

HostTopology host_from_json(const nlohmann::json& j) {
  HostTopology host;
  for (const auto& n : j.at("nics")) {
    Nic nic;
    nic.name = n.at("name");
    nic.pci_address = n.at("pci_address");
    nic.pci_path = n.at("pci_path").get<std::vector<std::string>>();
    nic.numa_node = n.at("numa_node");
    for (const auto& p : n.at("ports")) {
      nic.ports.push_back(
          {p.at("port"), p.at("state"), p.at("rate"), p.at("rate_gbps"), p.at("link_layer"), p.at("gid")});
    }
    host.nics.push_back(nic);
  }
  host.nic_source = j.at("nic_source");
  for (const auto& g : j.at("gpus")) {
    Gpu gpu;
    gpu.pci_address = g.at("pci_address");
    gpu.pci_path = g.at("pci_path").get<std::vector<std::string>>();
    gpu.numa_node = g.at("numa_node");
    gpu.name = g.at("name");
    gpu.nvlinks = g.at("nvlinks");
    gpu.nearest_nic = g.at("nearest_nic");
    gpu.nic_relation = g.at("nic_relation");
    host.gpus.push_back(gpu);
  }
  host.nvml_status = j.at("nvml_status");
  host.gpudirect_module = j.at("gpudirect_module");
  return host;
}

}  // namespace ferry::tools::topo
