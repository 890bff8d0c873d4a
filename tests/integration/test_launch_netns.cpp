// `ferry launch --netns`: one network, IPC and UTS namespace per node, TCP between nodes, link shaping, and a
// cluster that is always torn down. Needs root and iproute2; elsewhere every test warns and passes vacuously.
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <map>
#include <set>

#include "launch_harness.hpp"

using namespace launch_test;

namespace {

std::vector<std::string> args(std::vector<std::string> options, const std::vector<std::string>& command) {
  options.push_back("--");
  options.insert(options.end(), command.begin(), command.end());
  return options;
}

// The network namespaces a launcher with pid `pid` created and did not delete.
std::vector<std::string> leftover_namespaces(pid_t pid) {
  return lines_starting_with(shell_output(std::string(kIp) + " netns list"),
                             "ferry-" + std::to_string(pid) + "-");
}

std::string root_links() {
  return shell_output(std::string(kIp) + " -o link show | cut -d: -f2");
}

// "key=value" words of a probe line.
std::map<std::string, std::string> fields(const std::string& line) {
  std::map<std::string, std::string> out;
  std::istringstream in(line);
  for (std::string word; in >> word;) {
    auto equals = word.find('=');
    if (equals != std::string::npos) out[word.substr(0, equals)] = word.substr(equals + 1);
  }
  return out;
}

}  // namespace

TEST_CASE("launch netns: each node has its own address and hostname and namespaces and TCP crosses nodes",
          "[netns]") {
  SKIP_WITHOUT_NETNS();
  LaunchProcess process(
      args({"--netns", "--nodes", "2", "--ranks-per-node", "2", "--timeout", "60"}, {LAUNCH_PROBE_BIN}));
  auto result = process.finish();
  INFO(result.describe());
  REQUIRE(result.exit_code == 0);

  std::vector<std::map<std::string, std::string>> ranks;
  for (int rank = 0; rank < 4; ++rank) {
    auto lines = lines_starting_with(result.out, "[r" + std::to_string(rank) + "] probe ");
    REQUIRE(lines.size() == 1);
    ranks.push_back(fields(lines[0]));
  }
  // Ranks of one node share everything; the two nodes share nothing.
  for (const char* key : {"addr", "host", "ipc", "net", "uts"}) {
    INFO(key);
    CHECK(ranks[0][key] == ranks[1][key]);
    CHECK(ranks[2][key] == ranks[3][key]);
    CHECK(ranks[0][key] != ranks[2][key]);
  }
  CHECK(ranks[0]["host"] == "node0");
  CHECK(ranks[2]["host"] == "node1");
  CHECK(ranks[0]["addr"].rfind("10.", 0) == 0);
  CHECK(ranks[0]["addr"].substr(ranks[0]["addr"].rfind('.')) == ".1");
  CHECK(ranks[2]["addr"].substr(ranks[2]["addr"].rfind('.')) == ".2");
  CHECK(result.out.find("[r0] accepted: hello from node1 " + ranks[2]["addr"]) != std::string::npos);
  CHECK(leftover_namespaces(process.pid()).empty());
}

TEST_CASE("launch netns: the store lives on node 0's address", "[netns]") {
  SKIP_WITHOUT_NETNS();
  auto result = launch(
      args({"--netns", "--nodes", "2"},
           {"sh", "-c", "echo $FERRY_STORE $FERRY_NODE_ADDR $MASTER_ADDR $MASTER_PORT $GLOO_SOCKET_IFNAME"}));
  INFO(result.describe());
  REQUIRE(result.exit_code == 0);
  auto node0 = lines_starting_with(result.out, "[r0] ");
  auto node1 = lines_starting_with(result.out, "[r1] ");
  REQUIRE(node0.size() == 1);
  REQUIRE(node1.size() == 1);
  std::istringstream line0(node0[0].substr(5)), line1(node1[0].substr(5));
  std::string store0, address0, store1, address1, master0, master1, port0, port1, interface0, interface1;
  line0 >> store0 >> address0 >> master0 >> port0 >> interface0;
  line1 >> store1 >> address1 >> master1 >> port1 >> interface1;
  CHECK(store0 == address0 + ":29500");
  CHECK(store1 == store0);
  CHECK(address1 != address0);
  // torch.distributed's rendezvous (torchrun's variables) on node 0 too, next to the store; gloo on eth0.
  CHECK(master0 == address0);
  CHECK(master1 == address0);
  CHECK(port0 == "29501");
  CHECK(port1 == "29501");
  CHECK(interface0 == "eth0");
  CHECK(interface1 == "eth0");
}

TEST_CASE("launch netns: link-gbps shapes every node's link", "[netns]") {
  SKIP_WITHOUT_NETNS();
  LaunchProcess process(args({"--netns", "--nodes", "2", "--link-gbps", "1"},
                             {"sh", "-c", "PATH=$PATH:/usr/sbin:/sbin tc qdisc show dev eth0"}));
  auto result = process.finish();
  INFO(result.describe());
  REQUIRE(result.exit_code == 0);
  for (std::string rank : {"0", "1"}) {
    auto lines = lines_starting_with(result.out, "[r" + rank + "] qdisc tbf");
    REQUIRE(lines.size() == 1);
    CHECK(lines[0].find("rate 1Gbit") != std::string::npos);
  }
  CHECK(leftover_namespaces(process.pid()).empty());
}

TEST_CASE("launch netns: a failing rank still leaves no namespace behind", "[netns]") {
  SKIP_WITHOUT_NETNS();
  LaunchProcess process(args({"--netns", "--nodes", "2", "--timeout", "30"},
                             {"sh", "-c", "if [ $FERRY_NODE = 1 ]; then exit 5; fi; exec sleep 100"}));
  auto result = process.finish();
  INFO(result.describe());
  CHECK(result.exit_code == 5);
  CHECK(result.seconds < 15);
  CHECK(leftover_namespaces(process.pid()).empty());
}

TEST_CASE("launch netns: SIGTERM tears the cluster down and the root namespace is never touched", "[netns]") {
  SKIP_WITHOUT_NETNS();
  const auto links_before = root_links();
  LaunchProcess process(
      args({"--netns", "--nodes", "2", "--timeout", "60"}, {"sh", "-c", "echo ready; exec sleep 100"}));
  REQUIRE(process.wait_for_output("ready", 2, std::chrono::seconds(30)));
  CHECK(leftover_namespaces(process.pid()).size() == 3);  // two nodes and the switch
  CHECK(root_links() == links_before);
  REQUIRE(::kill(process.pid(), SIGTERM) == 0);
  auto result = process.finish();
  INFO(result.describe());
  CHECK(result.exit_code == 128 + SIGTERM);
  CHECK(leftover_namespaces(process.pid()).empty());
  CHECK(root_links() == links_before);
}

TEST_CASE("launch netns: namespaces left by a launcher that crashed are collected", "[netns]") {
  SKIP_WITHOUT_NETNS();
  // A pid that surely belongs to no running launcher: a child that has exited and been reaped.
  pid_t dead = ::fork();
  REQUIRE(dead >= 0);
  if (dead == 0) ::_exit(0);
  ::waitpid(dead, nullptr, 0);
  const std::string stale = "ferry-" + std::to_string(dead) + "-n0";
  shell_output(std::string(kIp) + " netns add " + stale);
  REQUIRE(leftover_namespaces(dead).size() == 1);

  auto result = launch(args({"--netns"}, {"true"}));
  INFO(result.describe());
  CHECK(result.exit_code == 0);
  // (Any launcher that starts now collects it; under ctest -j that may be another test's, so no message
  // check.)
  CHECK(leftover_namespaces(dead).empty());
}

TEST_CASE("launch netns: netns without root is refused with a clear message", "[netns]") {
  SKIP_WITHOUT_NETNS();
  constexpr int kNobody = 65534;
  LaunchProcess process(args({"--netns"}, {"true"}), kNobody);
  auto result = process.finish();
  INFO(result.describe());
  if (result.exit_code == 98 || result.exit_code == 99) {
    ferry::test::skip("cannot run " FERRY_BIN " as uid 65534 here");
  }
  CHECK(result.exit_code == 2);
  CHECK(result.err.find("--netns needs root (CAP_SYS_ADMIN) and iproute2's ip") != std::string::npos);
}
