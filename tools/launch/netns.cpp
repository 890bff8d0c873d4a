#include "launch/netns.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>
#include <thread>

#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"
#include "launch/subprocess.hpp"

namespace ferry::tools::launch {
namespace {

using namespace std::chrono_literals;

constexpr const char* kNetnsDir = "/var/run/netns";
constexpr auto kHolderTimeout = 10s;
constexpr auto kConnectivityTimeout = 15s;
constexpr const char* kBridge = "br0";
constexpr const char* kNodeInterface = "eth0";

std::string prefix_for_pid(int pid) {
  return "ferry-" + std::to_string(pid) + "-";
}

// The launcher pid in a name "ferry-<pid>-<rest>", or -1 when the name is not one of ours.
int owner_pid(const std::string& name) {
  const std::string head = "ferry-";
  if (name.compare(0, head.size(), head) != 0) return -1;
  std::size_t end = head.size();
  while (end < name.size() && name[end] >= '0' && name[end] <= '9') ++end;
  if (end == head.size() || end >= name.size() || name[end] != '-' || end - head.size() > 9) return -1;
  return std::stoi(name.substr(head.size(), end - head.size()));
}

bool process_gone(int pid) {
  return ::kill(pid, 0) != 0 && errno == ESRCH;
}

sockaddr_in ipv4(const std::string& address, int port) {
  sockaddr_in out{};
  out.sin_family = AF_INET;
  out.sin_port = htons(static_cast<std::uint16_t>(port));
  if (::inet_pton(AF_INET, address.c_str(), &out.sin_addr) != 1) {
    fail(Errc::internal, "ferry launch: bad IPv4 address '" + address + "'");
  }
  return out;
}

void enter_net(int fd, const std::string& name) {
  if (::setns(fd, CLONE_NEWNET) != 0) fail_errno("setns into network namespace " + name, errno);
}

// One TCP connection attempt with a deadline of its own; true when the handshake completed.
bool try_connect(const sockaddr_in& target, const Deadline& deadline, int& error) {
  UniqueFd sock(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0));
  if (!sock) fail_errno("socket", errno);
  if (::connect(sock.get(), reinterpret_cast<const sockaddr*>(&target), sizeof target) == 0) return true;
  if (errno != EINPROGRESS) {
    error = errno;
    return false;
  }
  pollfd pfd{sock.get(), POLLOUT, 0};
  int ready = ::poll(&pfd, 1, std::min(deadline.remaining_ms(), 1000));
  if (ready <= 0) {
    error = ready == 0 ? ETIMEDOUT : errno;
    return false;
  }
  socklen_t length = sizeof error;
  ::getsockopt(sock.get(), SOL_SOCKET, SO_ERROR, &error, &length);
  return error == 0;
}

}  // namespace

// ---- NamedNetns ----

NamedNetns::NamedNetns(std::string ip_path, std::string name)
    : ip_path_(std::move(ip_path)), name_(std::move(name)) {
  run_checked({ip_path_, "netns", "add", name_}, kAdminCommandTimeout);
  std::string path = std::string(kNetnsDir) + "/" + name_;
  fd_.reset(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  if (!fd_) {
    int error = errno;
    run_command({ip_path_, "netns", "del", name_}, kAdminCommandTimeout);
    fail_errno("ferry launch: open " + path, error);
  }
}

NamedNetns::~NamedNetns() {
  fd_.reset();
  try {
    auto result = run_command({ip_path_, "netns", "del", name_}, kAdminCommandTimeout);
    if (!result.succeeded()) {
      std::fprintf(stderr, "ferry launch: warning: 'ip netns del %s' failed with %s: %s\n", name_.c_str(),
                   describe_wait_status(result.wait_status).c_str(), result.output.c_str());
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "ferry launch: warning: could not delete network namespace %s: %s\n", name_.c_str(),
                 e.what());
  }
}

// ---- NetnsCluster ----

void NetnsCluster::check_prerequisites(const Options& options) {
  const std::string requirement = "--netns needs root (CAP_SYS_ADMIN) and iproute2's ip";
  if (::geteuid() != 0) {
    fail(Errc::unsupported, requirement + " (running as uid " + std::to_string(::geteuid()) + ")");
  }
  if (!find_executable("ip")) fail(Errc::unsupported, requirement + " (no 'ip' found in PATH or /usr/sbin)");
  if (!options.link_gbps.empty() && !find_executable("tc")) {
    fail(Errc::unsupported, "--link-gbps needs iproute2's tc (none found in PATH or /usr/sbin)");
  }
  if (options.drop_rate && !find_executable("nft")) {
    fail(Errc::unsupported,
         "--drop-rate needs nftables' nft (none found in PATH or /usr/sbin; apt-get install "
         "nftables, or run scripts/setup)");
  }
  if (options.nodes < 1 || options.nodes > 253) {
    fail(Errc::invalid_argument,
         "--netns supports 1 to 253 nodes (one /24 subnet), not " + std::to_string(options.nodes));
  }
  if (!options.link_gbps.empty() && options.link_gbps.size() != static_cast<std::size_t>(options.nodes)) {
    fail(Errc::invalid_argument, "link rates: " + std::to_string(options.link_gbps.size()) + " for " +
                                     std::to_string(options.nodes) + " nodes");
  }
}

std::vector<std::string> NetnsCluster::collect_stale() {
  std::vector<std::string> removed;
  auto ip_path = find_executable("ip");
  std::unique_ptr<DIR, int (*)(DIR*)> dir(::opendir(kNetnsDir), ::closedir);
  if (!dir || !ip_path) return removed;
  std::vector<std::string> stale;
  const int self = ::getpid();
  while (dirent* entry = ::readdir(dir.get())) {
    std::string name = entry->d_name;
    int pid = owner_pid(name);
    // Our own pid can only be on a namespace when a crashed launcher had the same pid: it is stale as well.
    if (pid > 0 && (pid == self || process_gone(pid))) stale.push_back(name);
  }
  dir.reset();
  for (const auto& name : stale) {
    try {
      auto result = run_command({*ip_path, "netns", "del", name}, kAdminCommandTimeout);
      if (result.succeeded()) {
        std::fprintf(stderr, "ferry launch: removed stale network namespace %s (its launcher is gone)\n",
                     name.c_str());
        removed.push_back(name);
      } else {
        std::fprintf(stderr, "ferry launch: warning: could not remove stale network namespace %s: %s\n",
                     name.c_str(), result.output.c_str());
      }
    } catch (const std::exception& e) {
      std::fprintf(stderr, "ferry launch: warning: could not remove stale network namespace %s: %s\n",
                   name.c_str(), e.what());
    }
  }
  return removed;
}

std::string NetnsCluster::subnet_for_pid(int pid) {
  return "10." + std::to_string(200 + ((pid >> 8) % 50)) + "." + std::to_string(pid % 256);
}

NetnsCluster::NetnsCluster(const Options& options)
    : options_(options), prefix_(prefix_for_pid(::getpid())), subnet_(subnet_for_pid(::getpid())) {
  check_prerequisites(options_);
  ip_path_ = *find_executable("ip");
  if (!options_.link_gbps.empty()) tc_path_ = *find_executable("tc");
  if (options_.drop_rate) nft_path_ = *find_executable("nft");

  check_interrupted("creating the switch namespace");
  switch_ = std::make_unique<NamedNetns>(ip_path_, prefix_ + "sw");
  ip({"-n", switch_->name(), "link", "add", kBridge, "type", "bridge"});
  ip({"-n", switch_->name(), "link", "set", kBridge, "up"});
  for (int index = 0; index < options_.nodes; ++index) add_node(index);
  check_interrupted("checking connectivity");
  verify_connectivity();
  if (options_.drop_rate) {
    for (const auto& node : nodes_)
      install_drops(ip_path_, nft_path_, node.net->name(), kNodeInterface, *options_.drop_rate);
  }
}

DropCounts NetnsCluster::drop_counts() const {
  DropCounts total;
  if (!options_.drop_rate) return total;
  for (const auto& node : nodes_) {
    const DropCounts counts = read_drops(ip_path_, nft_path_, node.net->name());
    total.sent += counts.sent;
    total.dropped += counts.dropped;
  }
  return total;
}

NetnsCluster::~NetnsCluster() = default;  // members delete the node namespaces, then the switch

void NetnsCluster::check_interrupted(const char* step) const {
  if (options_.interrupted && options_.interrupted()) {
    fail(Errc::system, std::string("ferry launch: interrupted while ") + step);
  }
}

void NetnsCluster::ip(const std::vector<std::string>& args) const {
  std::vector<std::string> argv{ip_path_};
  argv.insert(argv.end(), args.begin(), args.end());
  run_checked(argv, kAdminCommandTimeout);
}

void NetnsCluster::add_node(int index) {
  check_interrupted("creating the node namespaces");
  const std::string veth = "n" + std::to_string(index);
  Node node;
  node.address = subnet_ + "." + std::to_string(index + 1);
  node.net = std::make_unique<NamedNetns>(ip_path_, prefix_ + veth);
  const auto& name = node.net->name();
  ip({"-n", name, "link", "set", "lo", "up"});
  // Both ends are created inside private namespaces: the root namespace never sees these links.
  ip({"-n", switch_->name(), "link", "add", veth, "type", "veth", "peer", "name", kNodeInterface, "netns",
      name});
  ip({"-n", switch_->name(), "link", "set", veth, "master", kBridge});
  ip({"-n", switch_->name(), "link", "set", veth, "up"});
  ip({"-n", name, "addr", "add", node.address + "/24", "dev", kNodeInterface});
  ip({"-n", name, "link", "set", kNodeInterface, "up"});
  make_ipc_and_uts(index, node);
  nodes_.push_back(std::move(node));
  shape_link(index);
}

void NetnsCluster::shape_link(int index) const {
  if (options_.link_gbps.empty()) return;
  const double gbps = options_.link_gbps.at(static_cast<std::size_t>(index));
  shape_device(node_namespace(index), kNodeInterface, gbps);         // what the node sends
  shape_device(switch_->name(), "n" + std::to_string(index), gbps);  // what the node receives
}

void NetnsCluster::shape_device(const std::string& netns, const std::string& device, double gbps) const {
  const auto rate_kbit = static_cast<long long>(std::llround(gbps * 1e6));
  // The bucket must hold at least one timer tick of traffic (4 ms at HZ=250) and a 64 KiB GSO segment, or the
  // filter cannot reach its rate; 50 ms of queue keeps TCP from seeing drops at the start of a burst.
  const auto bytes_per_tick = static_cast<long long>(gbps * 1e9 / 8 / 250);
  const long long burst = std::max<long long>(256 * 1024, bytes_per_tick);
  run_checked({tc_path_, "-n", netns, "qdisc", "add", "dev", device, "root", "tbf", "rate",
               std::to_string(rate_kbit) + "kbit", "burst", std::to_string(burst), "latency", "50ms"},
              kAdminCommandTimeout);
}

void NetnsCluster::make_ipc_and_uts(int index, Node& node) const {
  // A short-lived holder makes the namespaces (unshare) and names the node; handles on /proc/<holder>/ns/*
  // keep them alive after it exits, and every rank of the node setns()es into them.
  const std::string hostname = "node" + std::to_string(index);
  auto ready = Pipe::make();
  auto release = Pipe::make();
  pid_t holder = ::fork();
  if (holder < 0) fail_errno("ferry launch: fork for node " + std::to_string(index) + "'s namespaces", errno);
  if (holder == 0) {
    reset_signals_in_child();
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ready.read.reset();
    release.write.reset();
    int error = 0;
    if (::unshare(CLONE_NEWIPC | CLONE_NEWUTS) != 0) {
      error = errno;
    } else if (::sethostname(hostname.c_str(), hostname.size()) != 0) {
      error = errno;
    }
    [[maybe_unused]] auto wrote = ::write(ready.write.get(), &error, sizeof error);
    char byte;
    [[maybe_unused]] auto got = ::read(release.read.get(), &byte, 1);  // returns when the parent lets go
    ::_exit(0);
  }
  ready.write.reset();
  release.read.reset();
  const std::string what = "ferry launch: making node " + std::to_string(index) + "'s IPC and UTS namespaces";
  try {
    pollfd pfd{ready.read.get(), POLLIN, 0};
    Deadline deadline(kHolderTimeout);
    int polled;
    do {
      polled = ::poll(&pfd, 1, deadline.remaining_ms());
    } while (polled < 0 && errno == EINTR);
    int error = 0;
    if (polled <= 0 || ::read(ready.read.get(), &error, sizeof error) != static_cast<ssize_t>(sizeof error)) {
      fail(Errc::system, what + ": the helper process did not answer");
    }
    if (error != 0) fail_errno(what + ": unshare/sethostname", error);
    const std::string ns_dir = "/proc/" + std::to_string(holder) + "/ns/";
    node.ipc.reset(::open((ns_dir + "ipc").c_str(), O_RDONLY | O_CLOEXEC));
    if (!node.ipc) fail_errno(what + ": open " + ns_dir + "ipc", errno);
    node.uts.reset(::open((ns_dir + "uts").c_str(), O_RDONLY | O_CLOEXEC));
    if (!node.uts) fail_errno(what + ": open " + ns_dir + "uts", errno);
  } catch (...) {
    kill_and_reap(holder, kHolderTimeout);
    throw;
  }
  release.write.reset();
  if (!wait_until(holder, Deadline(kHolderTimeout))) kill_and_reap(holder, kHolderTimeout);
}

void NetnsCluster::verify_connectivity() const {
  // A forked child moves between namespaces (the launcher itself stays where it is): it listens on node 0's
  // address from inside node 0, then connects to it from inside every node, node 0 included.
  run_in_child("ferry launch: checking that every node reaches node 0", kConnectivityTimeout + 5s, [this] {
    Deadline deadline(kConnectivityTimeout);
    enter_net(nodes_[0].net->fd(), nodes_[0].net->name());
    UniqueFd listener(::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0));
    if (!listener) fail_errno("socket", errno);
    auto address = ipv4(nodes_[0].address, 0);
    if (::bind(listener.get(), reinterpret_cast<sockaddr*>(&address), sizeof address) != 0) {
      fail_errno("bind " + nodes_[0].address + " in " + nodes_[0].net->name(), errno);
    }
    if (::listen(listener.get(), 256) != 0) fail_errno("listen", errno);
    socklen_t length = sizeof address;
    ::getsockname(listener.get(), reinterpret_cast<sockaddr*>(&address), &length);
    const int port = ntohs(address.sin_port);

    for (const auto& node : nodes_) {
      enter_net(node.net->fd(), node.net->name());
      const auto target = ipv4(nodes_[0].address, port);
      int error = 0;
      while (!try_connect(target, deadline, error)) {
        if (deadline.expired()) {
          fail(Errc::timeout, "from " + node.net->name() + " (" + node.address + ") to " + nodes_[0].address +
                                  ":" + std::to_string(port) + ": " + std::strerror(error));
        }
        // Links may still be coming up (ARP, bridge ports): retry at a human pace, not in a spin.
        std::this_thread::sleep_for(20ms);
      }
    }
  });
}

int NetnsCluster::enter_node(int node, const char** failed_step) const noexcept {
  if (node < 0 || node >= nodes()) {
    *failed_step = "node index out of range";
    return EINVAL;
  }
  const auto& target = nodes_[static_cast<std::size_t>(node)];
  if (::setns(target.net->fd(), CLONE_NEWNET) != 0) {
    *failed_step = "setns(CLONE_NEWNET)";
    return errno;
  }
  if (::setns(target.ipc.get(), CLONE_NEWIPC) != 0) {
    *failed_step = "setns(CLONE_NEWIPC)";
    return errno;
  }
  if (::setns(target.uts.get(), CLONE_NEWUTS) != 0) {
    *failed_step = "setns(CLONE_NEWUTS)";
    return errno;
  }
  // As `ip netns exec` does: a private mount namespace whose /sys belongs to the node's network namespace, so
  // that /sys/class/net (read by UCX and ferry's probes) lists the node's interfaces, not the host's.
  if (::unshare(CLONE_NEWNS) != 0) {
    *failed_step = "unshare(CLONE_NEWNS)";
    return errno;
  }
  if (::mount("", "/", nullptr, MS_SLAVE | MS_REC, nullptr) != 0) {
    *failed_step = "mount --make-rslave /";
    return errno;
  }
  ::umount2("/sys", MNT_DETACH);  // fails harmlessly when nothing is mounted there
  if (::mount(target.net->name().c_str(), "/sys", "sysfs", 0, nullptr) != 0) {
    *failed_step = "mount sysfs on /sys";
    return errno;
  }
  return 0;
}

}  // namespace ferry::tools::launch
