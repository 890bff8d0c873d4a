#include "topo/topology_warnings.hpp"

#include <algorithm>
#include <map>

#include "plot/svg.hpp"

namespace ferry::tools::topo {
namespace {

std::string node_name(std::size_t node) {
  return "node " + std::to_string(node);
}

std::string list(const std::vector<std::size_t>& nodes) {
  std::string out;
  for (std::size_t node : nodes) out += (out.empty() ? "" : ", ") + std::to_string(node);
  return out;
}

}  // namespace

std::vector<std::string> topology_warnings(const std::vector<HostTopology>& per_node, int ranks_per_node) {
  std::vector<std::string> warnings;
  std::map<double, std::vector<std::string>> ports_by_rate;  // active ports' rates, to find slow ones
  for (std::size_t n = 0; n < per_node.size(); ++n) {
    const HostTopology& host = per_node[n];
    if (!host.gpus.empty() && !host.nics.empty() && host.gpudirect_module.empty()) {
      warnings.push_back(
          node_name(n) +
          ": GPUs and RDMA NICs but no GPUDirect RDMA (neither nvidia_peermem nor nv_peer_mem is "
          "loaded): the verbs fabric then needs dma-buf (Linux >= 5.12, the open GPU kernel "
          "driver), or GPU memory cannot be registered with the NICs");
    }
    for (const auto& gpu : host.gpus) {
      if (gpu.nic_relation == to_string(PciRelation::across_sockets)) {
        warnings.push_back(node_name(n) + ": GPU " + gpu.pci_address + " (NUMA " +
                           std::to_string(gpu.numa_node) + ") has no NIC on its socket; its nearest, " +
                           gpu.nearest_nic + ", is across the inter-socket link");
      }
    }
    for (const auto& nic : host.nics) {
      for (const auto& port : nic.ports) {
        const std::string where = node_name(n) + ": " + nic.name + " port " + std::to_string(port.port);
        if (port.state != "ACTIVE") {
          warnings.push_back(where + " is " + (port.state.empty() ? "in an unknown state" : port.state) +
                             ", not ACTIVE");
        } else if (port.rate_gbps > 0) {
          ports_by_rate[port.rate_gbps].push_back(where);
        }
      }
    }
    if (!host.gpus.empty() && static_cast<int>(host.gpus.size()) != ranks_per_node) {
      warnings.push_back(node_name(n) + ": " + std::to_string(host.gpus.size()) + " GPUs for " +
                         std::to_string(ranks_per_node) + " ranks per node (ferry runs one rank per GPU)");
    }
  }
  if (ports_by_rate.size() > 1) {
    const double fastest = ports_by_rate.rbegin()->first;
    for (const auto& [rate, ports] : ports_by_rate) {
      if (rate >= fastest) continue;
      for (const auto& where : ports) {
        warnings.push_back(where + " runs at " + plot::format_number(rate, 0) + " Gb/s where others run at " +
                           plot::format_number(fastest, 0) + " Gb/s");
      }
    }
  }
  // Nodes that differ from node 0 in what they hold.
  for (const char* what : {"GPUs", "RDMA NICs"}) {
    std::map<std::size_t, std::vector<std::size_t>> nodes_by_count;
    for (std::size_t n = 0; n < per_node.size(); ++n) {
      nodes_by_count[what[0] == 'G' ? per_node[n].gpus.size() : per_node[n].nics.size()].push_back(n);
    }
    if (nodes_by_count.size() < 2) continue;
    std::string text = "nodes differ in " + std::string(what) + ":";
    for (const auto& [count, nodes] : nodes_by_count) {
      text += " " + std::to_string(count) + " on node" + (nodes.size() > 1 ? "s " : " ") + list(nodes) + ";";
    }
    text.pop_back();
    warnings.push_back(text);
  }
  return warnings;
}

}  // namespace ferry::tools::topo
