// An emulated cluster on one machine: one network, IPC and UTS namespace per node, joined by veth links to a
// bridge in a private "switch" namespace, so that traffic between nodes really crosses TCP/IP while the root
// namespace's networking stays untouched.
//
//   ferry-<pid>-sw:  br0 ── n0, n1, ...            (veth ends, all attached to the bridge)
//   ferry-<pid>-n<i>: lo, eth0 = 10.<A>.<B>.<i+1>/24 (the veth peer of n<i>), hostname "node<i>"
//
// Everything is created with iproute2's `ip` (and `tc` for --link-gbps), run without a shell, and deleted
// again when the NetnsCluster is destroyed: namespaces take their links with them. POSIX shm (/dev/shm) is
// not separated by any of these namespaces; System V IPC is, per node.
#pragma once

#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "launch/link_faults.hpp"
#include "launch/unique_fd.hpp"

namespace ferry::tools::launch {

// A namespace made with `ip netns add` (so it has a name under /var/run/netns), deleted on destruction.
class NamedNetns {
 public:
  NamedNetns(std::string ip_path, std::string name);  // throws Errc::system naming the failing command
  ~NamedNetns();
  NamedNetns(const NamedNetns&) = delete;
  NamedNetns& operator=(const NamedNetns&) = delete;

  const std::string& name() const { return name_; }
  int fd() const { return fd_.get(); }  // open handle on the namespace, for setns(CLONE_NEWNET)

 private:
  std::string ip_path_;
  std::string name_;
  UniqueFd fd_;
};

class NetnsCluster {
 public:
  struct Options {
    int nodes = 1;
    // Empty, or one rate per node (Gbit/s): node i's link is shaped to link_gbps[i] in both directions (tc's
    // token bucket filter on its eth0 for what it sends, on the switch's end of its veth for what it
    // receives), so every transfer to or from a slow node runs at the slow node's rate.
    std::vector<double> link_gbps;
    std::optional<double> drop_rate;    // probability that a packet leaving a node's eth0 is dropped (nft)
    std::function<bool()> interrupted;  // checked between setup steps; true aborts with Errc::system
  };

  // Throws Errc::unsupported with "--netns needs root (CAP_SYS_ADMIN) and iproute2's ip" when the process is
  // not root or `ip` (or `tc`, for a link rate) cannot be found, Errc::invalid_argument when link_gbps holds
  // neither nothing nor one rate per node.
  static void check_prerequisites(const Options& options);

  // Deletes namespaces "ferry-<pid>-*" left by launchers that no longer run (they crashed or were SIGKILLed).
  // Returns their names. Never throws: problems are printed as warnings.
  static std::vector<std::string> collect_stale();

  // Builds the cluster and checks that every node reaches node 0 over TCP (then, with a drop rate, installs
  // the drops: the check itself runs on clean links). Throws ferry::Error naming the failing step; whatever
  // was created by then is deleted again.
  explicit NetnsCluster(const Options& options);
  ~NetnsCluster();
  NetnsCluster(const NetnsCluster&) = delete;
  NetnsCluster& operator=(const NetnsCluster&) = delete;

  int nodes() const { return static_cast<int>(nodes_.size()); }
  const std::string& node_address(int node) const {
    return nodes_.at(static_cast<std::size_t>(node)).address;
  }
  const std::string& node_namespace(int node) const {
    return nodes_.at(static_cast<std::size_t>(node)).net->name();
  }
  // Packets sent on, and dropped from, all node links so far (zeros without a drop rate).
  DropCounts drop_counts() const;
  // The prefix of every namespace name this cluster owns: "ferry-<pid>-".
  const std::string& name_prefix() const { return prefix_; }

  // Moves the calling process into `node`'s network, IPC and UTS namespaces, and into a mount namespace of
  // its own with the node's /sys (as `ip netns exec`). Meant for a freshly forked rank before exec:
  // async-signal-safe, no allocation. Returns 0, or the errno of the failed call with `*failed_step` naming
  // it.
  int enter_node(int node, const char** failed_step) const noexcept;

  // The /24 the cluster's addresses live in ("10.A.B"), derived from the launcher's pid so that concurrent
  // clusters differ (they cannot collide anyway: each lives behind its own private bridge).
  static std::string subnet_for_pid(int pid);

 private:
  struct Node {
    std::unique_ptr<NamedNetns> net;
    UniqueFd ipc;  // a handle keeps a namespace alive after the process that made it is gone
    UniqueFd uts;
    std::string address;
  };

  void check_interrupted(const char* step) const;
  void ip(const std::vector<std::string>& args) const;
  void add_node(int index);
  void make_ipc_and_uts(int index, Node& node) const;
  void shape_link(int index) const;
  void shape_device(const std::string& netns, const std::string& device, double gbps) const;
  void verify_connectivity() const;

  Options options_;
  std::string ip_path_;
  std::string tc_path_;
  std::string nft_path_;
  std::string prefix_;
  std::string subnet_;
  // Declared before nodes_ so that it outlives them: nodes are deleted first, then the switch.
  std::unique_ptr<NamedNetns> switch_;
  std::vector<Node> nodes_;
};

}  // namespace ferry::tools::launch
