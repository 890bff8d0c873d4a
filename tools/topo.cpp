// `ferry topo`: the group as every rank sees it — ranks, nodes, hosts, addresses, GPUs, NICs, fabrics — and
// per node the RDMA ports (state, rate, GID), each GPU's nearest NIC on the PCIe tree, NVLink, GPUDirect
// RDMA, with warnings for what will hurt (topo/topology_warnings.hpp). Under `ferry launch` every rank probes
// its own machine and rank 0 prints (and optionally writes) the cluster.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/output_paths.hpp"
#include "cli/usage.hpp"
#include "commands.hpp"
#include "ferry/core/error.hpp"
#include "ferry/devices.hpp"
#include "ferry/ferry.hpp"
#include "topo/device_queries.hpp"
#include "topo/host_topology.hpp"
#include "topo/topology_warnings.hpp"

namespace ferry::tools {
namespace {

// This rank's host: sysfs under `sysfs_root`, refined by ibverbs, NVML and CUDA unless the tree is a
// stand-in.
topo::HostTopology probe_host(const std::string& sysfs_root, const MachineInfo& machine) {
  topo::HostTopology host = topo::read_sysfs(sysfs_root.empty() ? "/sys" : sysfs_root);
  if (sysfs_root.empty()) {
    topo::apply_ibverbs(host);
    topo::apply_nvml(host);
    topo::apply_cuda_names(host, machine.gpus);
  } else {
    host.nvml_status = "not tried: --sysfs";
  }
  return host;
}

nlohmann::json describe_rank(const Group& group, const MachineInfo& machine, const topo::HostTopology& host) {
  const auto& me = group.ranks()[group.rank()];
  nlohmann::json gpus = nlohmann::json::array();
  for (const auto& gpu : machine.gpus) {
    gpus.push_back({{"index", gpu.index},
                    {"name", gpu.name},
                    {"pci_bus_id", gpu.pci_bus_id},
                    {"memory_bytes", gpu.memory_bytes},
                    {"sm_count", gpu.sm_count},
                    {"compute_capability", gpu.compute_capability}});
  }
  nlohmann::json nics = nlohmann::json::array();
  for (const auto& nic : machine.nics) {
    nics.push_back({{"name", nic.name},
                    {"transport", nic.transport},
                    {"ports", nic.ports},
                    {"active_ports", nic.active_ports}});
  }
  return {{"rank", me.rank},
          {"node", me.node},
          {"local_rank", me.local_rank},
          {"hostname", me.hostname},
          {"address", me.address},
          {"pid", me.pid},
          {"gpus", gpus},
          {"gpu_status", machine.gpu_status},
          {"nics", nics},
          {"nic_status", machine.nic_status},
          {"ucx_version", machine.ucx_version},
          {"shm", machine.shm_available},
          {"fabrics", machine.fabrics},
          {"host", topo::to_json(host)}};
}

std::string relation_text(const topo::Gpu& gpu) {
  if (gpu.nearest_nic.empty()) return "no RDMA NIC";
  return "nearest NIC " + gpu.nearest_nic + " (" + gpu.nic_relation + ")";
}

void print_host(int node, const nlohmann::json& host_json) {
  const topo::HostTopology host = topo::host_from_json(host_json);
  std::printf("node %d devices (%s; GPUDirect RDMA: %s; NVML: %s):\n", node, host.nic_source.c_str(),
              host.gpudirect_module.empty() ? "not loaded" : host.gpudirect_module.c_str(),
              host.nvml_status.c_str());
  if (host.nics.empty()) std::printf("  no RDMA NIC\n");
  for (const auto& nic : host.nics) {
    for (const auto& port : nic.ports) {
      std::printf("  NIC %s port %d: %s, %s, %s, GID %s, PCI %s, NUMA %d\n", nic.name.c_str(), port.port,
                  port.state.c_str(), port.rate.empty() ? "rate ?" : port.rate.c_str(),
                  port.link_layer.empty() ? "?" : port.link_layer.c_str(),
                  port.gid.empty() ? "-" : port.gid.c_str(),
                  nic.pci_address.empty() ? "?" : nic.pci_address.c_str(), nic.numa_node);
    }
    if (nic.ports.empty()) std::printf("  NIC %s: no port found\n", nic.name.c_str());
  }
  if (host.gpus.empty()) std::printf("  no GPU on the PCIe bus\n");
  for (const auto& gpu : host.gpus) {
    const std::string links = gpu.nvlinks >= 0 ? ", " + std::to_string(gpu.nvlinks) + " NVLinks active" : "";
    std::printf("  GPU %s (%s), NUMA %d: %s%s\n", gpu.pci_address.c_str(), gpu.name.c_str(), gpu.numa_node,
                relation_text(gpu).c_str(), links.c_str());
  }
}

std::string join(const nlohmann::json& list) {
  std::string out;
  for (const auto& item : list) out += (out.empty() ? "" : ",") + item.get<std::string>();
  return out.empty() ? "-" : out;
}

void print_cluster(const Group& group, const nlohmann::json& cluster) {
  const auto& job = group.job();
  std::printf("ferry topology: %d ranks = %d node(s) x %d rank(s) per node  [%s, job %s, ferry %s]\n",
              group.world_size(), group.num_nodes(), group.local_size(), to_string(job.launcher),
              job.job_id.c_str(), cluster["version"].get<std::string>().c_str());
  std::printf("%-5s %-5s %-6s %-16s %-16s %-8s %-5s %-5s %s\n", "rank", "node", "local", "host", "address",
              "pid", "gpus", "nics", "fabrics");
  for (const auto& r : cluster["ranks"]) {
    std::printf("%-5d %-5d %-6d %-16s %-16s %-8d %-5zu %-5zu %s\n", r["rank"].get<int>(),
                r["node"].get<int>(), r["local_rank"].get<int>(), r["hostname"].get<std::string>().c_str(),
                r["address"].get<std::string>().c_str(), r["pid"].get<int>(), r["gpus"].size(),
                r["nics"].size(), join(r["fabrics"]).c_str());
  }
  for (const auto& node : cluster["nodes"]) {
    std::printf("node %d: host %s, address %s, ranks %d-%d\n", node["node"].get<int>(),
                node["hostname"].get<std::string>().c_str(), node["address"].get<std::string>().c_str(),
                node["first_rank"].get<int>(), node["last_rank"].get<int>());
  }
  const auto& first = cluster["ranks"][0];
  std::printf("devices seen by rank 0: GPUs: %s; RDMA: %s; UCX %s; shm %s\n",
              first["gpus"].empty() ? first["gpu_status"].get<std::string>().c_str()
                                    : std::to_string(first["gpus"].size()).c_str(),
              first["nics"].empty() ? first["nic_status"].get<std::string>().c_str()
                                    : std::to_string(first["nics"].size()).c_str(),
              first["ucx_version"].get<std::string>().c_str(), first["shm"].get<bool>() ? "yes" : "no");
}

void run_topo(const std::string& json_path, const std::string& sysfs_root) {
  const JobEnv job = cli::before_work([&] {
    JobEnv env = resolve_job_env();
    if (env.rank == 0) cli::check_output_file("--json", json_path);
    return env;
  });
  auto group = Group::from_job(job);
  const MachineInfo machine = probe_machine();
  auto mine = describe_rank(group, machine, probe_host(sysfs_root, machine)).dump();
  auto blobs =
      group.all_gather("ferry/topo", {reinterpret_cast<const std::uint8_t*>(mine.data()), mine.size()});
  if (group.rank() != 0) return;

  nlohmann::json cluster;
  cluster["version"] = ferry::version();
  cluster["world_size"] = group.world_size();
  cluster["num_nodes"] = group.num_nodes();
  cluster["local_size"] = group.local_size();
  cluster["launcher"] = to_string(group.job().launcher);
  cluster["ranks"] = nlohmann::json::array();
  for (const auto& blob : blobs) cluster["ranks"].push_back(nlohmann::json::parse(blob.begin(), blob.end()));
  cluster["nodes"] = nlohmann::json::array();
  for (int node = 0; node < group.num_nodes(); ++node) {
    const auto& lead = cluster["ranks"][node * group.local_size()];
    cluster["nodes"].push_back({{"node", node},
                                {"hostname", lead["hostname"]},
                                {"address", lead["address"]},
                                {"first_rank", node * group.local_size()},
                                {"last_rank", (node + 1) * group.local_size() - 1}});
  }
  std::vector<topo::HostTopology> hosts;
  for (const auto& node : cluster["nodes"]) {
    hosts.push_back(topo::host_from_json(cluster["ranks"][node["first_rank"].get<int>()]["host"]));
  }
  cluster["warnings"] = topo::topology_warnings(hosts, group.local_size());
  print_cluster(group, cluster);
  for (const auto& node : cluster["nodes"]) {
    print_host(node["node"].get<int>(), cluster["ranks"][node["first_rank"].get<int>()]["host"]);
  }
  if (cluster["warnings"].empty()) std::printf("no warnings\n");
  for (const auto& warning : cluster["warnings"])
    std::printf("WARNING: %s\n", warning.get<std::string>().c_str());
  std::fflush(stdout);
  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << cluster.dump(2) << "\n";
    if (!out) fail(Errc::system, "cannot write topology JSON to '" + json_path + "'");
  }
}

}  // namespace

void register_topo(CLI::App& app, int& /*exit_code*/) {
  auto* cmd =
      app.add_subcommand("topo", "Print the group's topology: ranks, nodes, hosts, GPUs, NICs, fabrics");
  auto json_path = std::make_shared<std::string>();
  auto sysfs_root = std::make_shared<std::string>();
  cmd->add_option("--json", *json_path, "Also write the cluster's topology as JSON to this file (rank 0)");
  cmd->add_option(
         "--sysfs", *sysfs_root,
         "Read devices from this copy of /sys instead (no ibverbs, NVML or CUDA queries): for tests, or "
         "a tree saved from another machine")
      ->check(CLI::ExistingDirectory);
  cli::set_examples(*cmd, {
                              "ferry topo                                   # this process alone",
                              "ferry launch --nodes 2 --ranks-per-node 4 -- ferry topo --json topo.json",
                              "ferry topo --sysfs /tmp/sys-of-node7        # a saved /sys tree",
                          });
  cmd->callback([json_path, sysfs_root] { run_topo(*json_path, *sysfs_root); });
}

}  // namespace ferry::tools
