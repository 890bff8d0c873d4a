// What in a cluster's topology will hurt dispatch/combine, in words `ferry topo` prints:
//   - GPUs and RDMA NICs on a node but no GPUDirect RDMA module (nvidia_peermem / nv_peer_mem) loaded;
//   - a GPU whose nearest NIC is on another socket (NUMA node);
//   - a NIC port that is not ACTIVE;
//   - NIC ports of different rates across the cluster (a slow port names itself);
//   - nodes with different numbers of GPUs or NICs, and ranks per node that do not match the GPUs per node.
// (Unequal ranks per node never reach here: the Group refuses such a job, naming the offending rank.)
#pragma once

#include <string>
#include <vector>

#include "topo/host_topology.hpp"

namespace ferry::tools::topo {

// per_node[i]: node i's host as its local rank 0 sees it.
std::vector<std::string> topology_warnings(const std::vector<HostTopology>& per_node, int ranks_per_node);

}  // namespace ferry::tools::topo
