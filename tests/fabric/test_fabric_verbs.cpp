// The verbs fabric: where an RDMA device exists, the same multi-process scenarios as the ucx fabric;
// elsewhere "skipped: no RDMA device (<reason>)" and exit 77, which ctest reports as skipped
// (SKIP_RETURN_CODE).
#include <sys/wait.h>

#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/fabric.hpp"

namespace {

constexpr int kSkipped = 77;

// Runs `ferry launch` with the worker; true when the launcher's exit status matches `expect_success`.
bool run_job(int nodes, int ranks_per_node, const std::string& scenario, bool expect_success) {
  std::string command = std::string(FERRY_BIN) + " launch --nodes " + std::to_string(nodes) +
                        " --ranks-per-node " + std::to_string(ranks_per_node) + " --timeout 80 -- " +
                        FABRIC_WORKER + " " + scenario + " --fabric verbs --timeout 20 2>&1";
  std::printf("$ %s\n", command.c_str());
  std::fflush(stdout);
  int status = std::system(command.c_str());
  bool success = status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0;
  std::printf("-> %s\n", success == expect_success ? "as expected" : "UNEXPECTED");
  return success == expect_success;
}

}  // namespace

int main() {
  try {
    auto group = ferry::Group::from_job(ferry::JobEnv{});
    ferry::transport::Peers peers;
    peers.store = &group.store();
    ferry::transport::FabricOptions options;
    options.kind = ferry::transport::FabricKind::verbs;
    auto fabric = ferry::transport::make_fabric(peers, options);
    std::printf("verbs fabric: %s\n", fabric->description().c_str());
  } catch (const ferry::Error& e) {
    if (e.code() == ferry::Errc::unsupported) {
      std::printf("skipped: no RDMA device (%s)\n", e.what());
      return kSkipped;
    }
    std::printf("FAILED: %s\n", e.what());
    return 1;
  }
  bool ok = true;
  ok &= run_job(1, 2, "random_puts", true);
  ok &= run_job(1, 2, "signal_order", true);
  ok &= run_job(1, 3, "atomics", true);
  ok &= run_job(1, 2, "shutdown", true);
  ok &= run_job(1, 2, "kill_peer", false);
  std::printf("%s\n", ok ? "verbs fabric: all scenarios passed" : "verbs fabric: FAILED");
  return ok ? 0 : 1;
}
