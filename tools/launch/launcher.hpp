// `ferry launch`: runs nodes x ranks_per_node copies of a command on this machine as one ferry job,
// optionally as an emulated cluster of network namespaces (netns.hpp), and supervises them until every one
// has ended.
//
// Guarantees: every rank runs in its own process group, so a rank's children are stopped with it; the first
// rank to fail stops the job (unless keep_going) and its status becomes the launcher's; SIGINT/SIGTERM/SIGHUP
// are forwarded and followed by SIGKILL after a grace period; a timeout stops everything with status 124; no
// process the job started is left running or unreaped when run_launch returns, and no namespace is left
// behind.
#pragma once

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace ferry::tools::launch {

struct LaunchOptions {
  int nodes = 1;
  int ranks_per_node = 1;
  bool netns = false;  // one network + IPC + UTS namespace per node (root only)
  // With netns: each node's link rate in Gbit/s, both directions. Empty: unshaped; one value: every node;
  // one value per node: node i's link at link_gbps[i] (a slow node, as a bad cable or NIC would make it).
  std::vector<double> link_gbps;
  std::optional<double> drop_rate;        // with netns: probability that a packet on a node's link is dropped
  std::chrono::seconds timeout{600};      // for the whole job; zero means none
  bool prefix_output = true;              // "[r<rank>] " before every line of output
  std::chrono::milliseconds grace{3000};  // between SIGTERM (or a forwarded signal) and SIGKILL
  // A failed rank does not stop the others: the job ends when every rank has (for jobs whose survivors go on
  // without a dead rank, as the low-latency mode masks it). The status is still the first failed rank's.
  bool keep_going = false;
  std::vector<std::string> command;  // argv of every rank; argv[0] is searched in PATH
};

// Exit codes besides the ranks' own statuses.
inline constexpr int kExitSetupFailed = 1;  // the job could not be started (the message says why)
inline constexpr int kExitUsage = 2;        // bad options, or --netns without root / iproute2
inline constexpr int kExitTimeout = 124;    // --timeout expired (as timeout(1))

// Runs the job and returns the launcher's exit code: 0 when every rank exited 0; the status of the first rank
// that failed (128 + signal when it was killed by one); 128 + signal when the launcher was interrupted;
// kExitTimeout; kExitUsage or kExitSetupFailed. Messages go to stderr, prefixed "ferry launch: ".
//
// Must be called by a single-threaded process that has no other children it cares about: it makes itself a
// child subreaper and reaps every child left at the end.
int run_launch(const LaunchOptions& options);

}  // namespace ferry::tools::launch
