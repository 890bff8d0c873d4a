// `ferry topo`: the group as every rank sees it — ranks, nodes, hosts, addresses, GPUs, NICs, fabrics.
// Under `ferry launch` every rank probes its own machine and rank 0 prints (and optionally writes) the
// cluster.
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "cli/usage.hpp"
#include "commands.hpp"
#include "ferry/core/error.hpp"
#include "ferry/devices.hpp"
#include "ferry/ferry.hpp"

namespace ferry::tools {
namespace {

nlohmann::json describe_rank(const Group& group, const MachineInfo& machine) {
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
          {"fabrics", machine.fabrics}};
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

void run_topo(const std::string& json_path) {
  auto group = Group::from_env();
  auto mine = describe_rank(group, probe_machine()).dump();
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
  print_cluster(group, cluster);
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
  cmd->add_option("--json", *json_path, "Also write the cluster's topology as JSON to this file (rank 0)");
  cli::set_examples(*cmd, {
                              "ferry topo                                   # this process alone",
                              "ferry launch --nodes 2 --ranks-per-node 4 -- ferry topo --json topo.json",
                          });
  cmd->callback([json_path] { run_topo(*json_path); });
}

}  // namespace ferry::tools
