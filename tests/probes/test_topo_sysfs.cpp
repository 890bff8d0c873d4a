// `ferry topo`'s device discovery and warnings on fake sysfs trees (this machine has no NIC and no GPU):
// ports, rates and GIDs parsed, each GPU's nearest NIC on the PCIe tree, and every warning the issue names.
#include <catch2/catch.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "../peer/launch_run.hpp"
#include "topo/host_topology.hpp"
#include "topo/topology_warnings.hpp"

namespace fs = std::filesystem;
using namespace ferry::tools::topo;

namespace {

// A /sys stand-in in a temporary directory, removed at the end.
class FakeSysfs {
 public:
  FakeSysfs() {
    char pattern[] = "/tmp/ferry-sysfs-XXXXXX";
    REQUIRE(::mkdtemp(pattern) != nullptr);
    root_ = pattern;
  }
  ~FakeSysfs() {
    std::error_code ignored;
    fs::remove_all(root_, ignored);
  }
  const std::string& root() const { return root_; }

  // A PCI device at devices/<path> (components joined by '/'), listed under bus/pci/devices.
  fs::path device(const std::string& path, const std::string& vendor, const std::string& pci_class,
                  int numa) {
    const fs::path dir = fs::path(root_) / "devices" / path;
    fs::create_directories(dir);
    write(dir / "vendor", vendor);
    write(dir / "class", pci_class);
    write(dir / "device", "0x2330");
    write(dir / "numa_node", std::to_string(numa));
    fs::create_directories(fs::path(root_) / "bus/pci/devices");
    fs::create_symlink(dir, fs::path(root_) / "bus/pci/devices" / dir.filename());
    return dir;
  }

  void gpu(const std::string& path, int numa) { device(path, "0x10de", "0x030200", numa); }

  void nic(const std::string& name, const std::string& path, int numa, const std::string& state,
           const std::string& rate) {
    const fs::path dir = device(path, "0x15b3", "0x020700", numa);
    const fs::path ib = fs::path(root_) / "class/infiniband" / name;
    fs::create_directories(ib / "ports/1/gids");
    fs::create_symlink(dir, ib / "device");
    write(ib / "ports/1/state", state);
    write(ib / "ports/1/rate", rate);
    write(ib / "ports/1/link_layer", "InfiniBand");
    write(ib / "ports/1/gids/0", "fe80:0000:0000:0000:0c42:a103:0065:1234");
  }

  void module(const std::string& name) { fs::create_directories(fs::path(root_) / "module" / name); }

 private:
  static void write(const fs::path& path, const std::string& text) {
    std::ofstream out(path);
    out << text << "\n";
  }
  std::string root_;
};

// A node with GPU0 and mlx5_0 under one PCIe switch (socket 0), GPU1 alone on socket 1, and mlx5_1's port
// down.
void typical_node(FakeSysfs& sys) {
  sys.gpu("pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:00.0", 0);
  sys.nic("mlx5_0", "pci0000:00/0000:00:01.0/0000:01:00.0/0000:02:01.0", 0, "4: ACTIVE",
          "200 Gb/sec (4X HDR)");
  sys.nic("mlx5_1", "pci0000:00/0000:00:02.0/0000:03:00.0", 0, "1: DOWN", "200 Gb/sec (4X HDR)");
  sys.gpu("pci0000:80/0000:80:01.0/0000:81:00.0", 1);
}

bool has(const std::vector<std::string>& warnings, const std::string& text) {
  for (const auto& w : warnings) {
    if (w.find(text) != std::string::npos) return true;
  }
  return false;
}

}  // namespace

TEST_CASE("topo: PCIe relations from the tree and the NUMA nodes", "[topo]") {
  const std::vector<std::string> gpu{"pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:00.0"};
  CHECK(relation(gpu, 0, {"pci0000:00", "0000:00:01.0", "0000:01:00.0", "0000:02:01.0"}, 0) ==
        PciRelation::same_switch);
  CHECK(relation(gpu, 0, {"pci0000:00", "0000:00:01.0", "0000:05:00.0"}, 0) == PciRelation::same_root_port);
  CHECK(relation(gpu, 0, {"pci0000:00", "0000:00:02.0", "0000:03:00.0"}, 0) == PciRelation::same_host_bridge);
  CHECK(relation(gpu, 0, {"pci0000:40", "0000:40:01.0"}, 0) == PciRelation::same_numa_node);
  CHECK(relation(gpu, 0, {"pci0000:80", "0000:80:01.0"}, 1) == PciRelation::across_sockets);
  CHECK(relation(gpu, -1, {"pci0000:80"}, -1) == PciRelation::across_sockets);
  CHECK(parse_rate_gbps("200 Gb/sec (4X HDR)") == 200);
  CHECK(parse_rate_gbps("") == 0);
}

TEST_CASE("topo: NICs, ports and GPUs from a sysfs tree, nearest NIC per GPU", "[topo]") {
  FakeSysfs sys;
  typical_node(sys);
  const HostTopology host = read_sysfs(sys.root());
  REQUIRE(host.nics.size() == 2);
  const Nic& nic = host.nics[0];
  CHECK(nic.name == "mlx5_0");
  CHECK(nic.pci_address == "0000:02:01.0");
  CHECK(nic.pci_path.front() == "pci0000:00");
  CHECK(nic.numa_node == 0);
  REQUIRE(nic.ports.size() == 1);
  CHECK(nic.ports[0].state == "ACTIVE");
  CHECK(nic.ports[0].rate_gbps == 200);
  CHECK(nic.ports[0].link_layer == "InfiniBand");
  CHECK(nic.ports[0].gid == "fe80:0000:0000:0000:0c42:a103:0065:1234");
  CHECK(host.nics[1].ports[0].state == "DOWN");
  REQUIRE(host.gpus.size() == 2);  // the NICs' own PCI functions are not GPUs
  CHECK(host.gpus[0].pci_address == "0000:02:00.0");
  CHECK(host.gpus[0].nearest_nic == "mlx5_0");
  CHECK(host.gpus[0].nic_relation == "same PCIe switch");
  CHECK(host.gpus[1].numa_node == 1);
  CHECK(host.gpus[1].nic_relation == "across sockets");
  CHECK(host.gpudirect_module.empty());
  CHECK(host_from_json(to_json(host)).gpus[1].nearest_nic == host.gpus[1].nearest_nic);

  const HostTopology empty = read_sysfs(sys.root() + "/no-such-dir");
  CHECK(empty.nics.empty());
  CHECK(empty.gpus.empty());
}

TEST_CASE("topo: warnings for GPUDirect, sockets, ports, rates and uneven nodes", "[topo]") {
  FakeSysfs first, second;
  typical_node(first);
  second.gpu("pci0000:00/0000:00:01.0/0000:01:00.0", 0);
  second.nic("mlx5_0", "pci0000:00/0000:00:01.0/0000:02:00.0", 0, "4: ACTIVE", "100 Gb/sec (4X EDR)");
  second.module("nvidia_peermem");
  const auto warnings = topology_warnings({read_sysfs(first.root()), read_sysfs(second.root())}, 2);
  INFO(nlohmann::json(warnings).dump(2));
  CHECK(has(warnings, "node 0: GPUs and RDMA NICs but no GPUDirect RDMA"));
  CHECK_FALSE(has(warnings, "node 1: GPUs and RDMA NICs but no GPUDirect RDMA"));
  CHECK(has(warnings, "node 0: GPU 0000:81:00.0 (NUMA 1) has no NIC on its socket"));
  CHECK(has(warnings, "node 0: mlx5_1 port 1 is DOWN, not ACTIVE"));
  CHECK(has(warnings, "node 1: mlx5_0 port 1 runs at 100 Gb/s where others run at 200 Gb/s"));
  CHECK(has(warnings, "node 1: 1 GPUs for 2 ranks per node"));
  CHECK(has(warnings, "nodes differ in GPUs: 1 on node 1; 2 on node 0"));
  CHECK(has(warnings, "nodes differ in RDMA NICs: 1 on node 1; 2 on node 0"));
  CHECK(warnings.size() == 7);

  FakeSysfs clean;
  clean.gpu("pci0000:00/0000:00:01.0/0000:01:00.0", 0);
  clean.nic("mlx5_0", "pci0000:00/0000:00:01.0/0000:02:00.0", 0, "4: ACTIVE", "400 Gb/sec (4X NDR)");
  clean.module("nv_peer_mem");
  CHECK(topology_warnings({read_sysfs(clean.root()), read_sysfs(clean.root())}, 1).empty());
}

TEST_CASE("ferry topo --sysfs prints the devices and the warnings, and writes them as JSON", "[topo]") {
  FakeSysfs sys;
  typical_node(sys);
  const std::string json = ferry::test::temp_path("topo-sysfs");
  const auto outcome =
      ferry::test::run(std::string(FERRY_BIN) + " topo --sysfs " + sys.root() + " --json " + json);
  REQUIRE(outcome.exit_code == 0);
  CHECK_THAT(outcome.output,
             Catch::Contains("NIC mlx5_0 port 1: ACTIVE, 200 Gb/sec (4X HDR), InfiniBand, GID fe80:"));
  CHECK_THAT(outcome.output,
             Catch::Contains("GPU 0000:02:00.0 (NVIDIA device 0x2330), NUMA 0: nearest NIC mlx5_0 "
                             "(same PCIe switch)"));
  CHECK_THAT(outcome.output, Catch::Contains("WARNING: node 0: mlx5_1 port 1 is DOWN"));
  std::ifstream in(json);
  REQUIRE(in.good());
  const auto cluster = nlohmann::json::parse(in);
  std::remove(json.c_str());
  CHECK(cluster["warnings"].size() == 4);  // GPUDirect, socket, port down, 2 GPUs for 1 rank
  CHECK(cluster["ranks"][0]["host"]["nics"].size() == 2);
}
