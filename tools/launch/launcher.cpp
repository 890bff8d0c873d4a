#include "launch/launcher.hpp"

#include <fcntl.h>
#include <poll.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <memory>

#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/peer_memory.hpp"
#include "launch/line_relay.hpp"
#include "launch/netns.hpp"
#include "launch/rank_env.hpp"
#include "launch/signal_relay.hpp"
#include "launch/subprocess.hpp"
#include "launch/unique_fd.hpp"

extern char** environ;

namespace ferry::tools::launch {
namespace {

using namespace std::chrono_literals;

constexpr int kMaxWorldSize = 1024;
constexpr int kNetnsStorePort = 29500;   // each emulated cluster has its own network: no other job is on it
constexpr int kNetnsMasterPort = 29501;  // torch.distributed's rendezvous there (MASTER_PORT)
// After the last rank exited, how long its leftover children may keep the output pipes open.
constexpr auto kDrainAfterExit = 2s;
// After SIGKILL, how long to wait for the kernel to let the ranks go before giving up on them.
constexpr auto kReapAfterKill = 10s;
constexpr auto kFinalReap = 5s;
constexpr int kMaxPollMs = 1000;

// Prints "ferry launch: <message>" on stderr (once, even when the message already carries the prefix).
void report(const std::string& message) {
  const std::string prefix = "ferry launch: ";
  std::string line = message.compare(0, prefix.size(), prefix) == 0 ? message : prefix + message;
  std::fprintf(stderr, "%s\n", line.c_str());
}

// An exception's message for the user: a ferry::Error without its "ferry: <category>: " head.
std::string user_message(const std::exception& e) {
  std::string text = e.what();
  if (const auto* error = dynamic_cast<const Error*>(&e)) {
    const std::string head = "ferry: " + std::string(to_string(error->code())) + ": ";
    if (text.compare(0, head.size(), head) == 0) text.erase(0, head.size());
  }
  return text;
}

struct RankProcess {
  int rank = 0;
  pid_t pid = -1;        // also the id of the rank's process group
  bool running = false;  // started and not yet reaped
  int wait_status = 0;
  std::unique_ptr<LineRelay> out;
  std::unique_ptr<LineRelay> err;
};

// The started ranks. Whatever path the launcher takes, none outlives this object: the destructor SIGKILLs
// every rank's process group (which also ends children the ranks left behind) and reaps the ranks.
class RankSet {
 public:
  RankSet() = default;
  RankSet(const RankSet&) = delete;
  RankSet& operator=(const RankSet&) = delete;
  ~RankSet() {
    signal_all(SIGKILL);
    Deadline deadline(kReapAfterKill);
    for (auto& rank : ranks) {
      if (!rank.running) continue;
      try {
        if (!wait_until(rank.pid, deadline)) {
          report("warning: rank " + std::to_string(rank.rank) + " (pid " + std::to_string(rank.pid) +
                 ") did not end after SIGKILL");
        }
      } catch (const std::exception&) {
        // Not our child any more: nothing left to reap.
      }
      rank.running = false;
    }
  }

  // Sends `signal_number` to every rank's process group; to the rank itself too, in case it left its group.
  void signal_all(int signal_number) {
    for (auto& rank : ranks) {
      if (rank.pid <= 0) continue;
      ::kill(-rank.pid, signal_number);
      if (rank.running) ::kill(rank.pid, signal_number);
    }
  }

  std::vector<RankProcess> ranks;
};

struct SpawnContext {
  std::vector<std::string> command;
  const NetnsCluster* cluster = nullptr;  // null without --netns
  int dev_null = -1;
  const rlimit* original_nofile = nullptr;  // restored in the rank when the launcher raised its own
  bool prefix_output = true;
};

void spawn_rank(const JobSpec& job, int rank_index, const SpawnContext& context, RankProcess& rank) {
  // Everything the child needs is prepared before fork().
  std::vector<char*> argv;
  for (const auto& arg : context.command) argv.push_back(const_cast<char*>(arg.c_str()));
  argv.push_back(nullptr);
  auto environment = rank_environment(job, rank_index, environ);
  std::vector<char*> envp;
  for (auto& entry : environment) envp.push_back(entry.data());
  envp.push_back(nullptr);
  const int node = job.node_of(rank_index);
  const std::string exec_failure =
      "ferry launch: rank " + std::to_string(rank_index) + ": cannot execute '" + context.command[0] + "': ";
  const std::string netns_failure = "ferry launch: rank " + std::to_string(rank_index) +
                                    ": cannot enter the namespaces of node " + std::to_string(node) + ": ";
  auto out = Pipe::make();
  auto err = Pipe::make();
  const pid_t launcher = ::getpid();

  pid_t pid = ::fork();
  if (pid < 0) fail_errno("ferry launch: fork for rank " + std::to_string(rank_index), errno);
  const int store_fd = rank_index == 0 ? job.store_fd : -1;
  if (pid == 0) {
    reset_signals_in_child();
    ::setpgid(0, 0);
    // Should the launcher itself be SIGKILLed, its ranks die with it rather than run on unsupervised.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (::getppid() != launcher) ::_exit(127);  // it died before prctl took effect
    ::dup2(context.dev_null, STDIN_FILENO);
    ::dup2(out.write.get(), STDOUT_FILENO);
    ::dup2(err.write.get(), STDERR_FILENO);
    if (context.original_nofile != nullptr) ::setrlimit(RLIMIT_NOFILE, context.original_nofile);
    if (context.cluster != nullptr) {
      const char* step = "";
      if (int error = context.cluster->enter_node(node, &step); error != 0) {
        write_all_noexcept(STDERR_FILENO, netns_failure.c_str());
        write_all_noexcept(STDERR_FILENO, step);
        write_all_noexcept(STDERR_FILENO, ": ");
        write_all_noexcept(STDERR_FILENO, std::strerror(error));
        write_all_noexcept(STDERR_FILENO, "\n");
        ::_exit(127);
      }
    }
    // The store's listening socket is close-on-exec like every descriptor of the launcher; rank 0 keeps it.
    if (store_fd >= 0) ::fcntl(store_fd, F_SETFD, 0);
    ::execvpe(argv[0], argv.data(), envp.data());
    const int error = errno;
    write_all_noexcept(STDERR_FILENO, exec_failure.c_str());
    write_all_noexcept(STDERR_FILENO, std::strerror(error));
    write_all_noexcept(STDERR_FILENO, "\n");
    ::_exit(error == ENOENT ? 127 : 126);  // as a shell reports "not found" and "not executable"
  }
  // The parent sets the group too, so no signal sent to the group after fork() returns can miss the child.
  ::setpgid(pid, pid);
  rank.rank = rank_index;
  rank.pid = pid;
  rank.running = true;
  const std::string prefix = context.prefix_output ? "[r" + std::to_string(rank_index) + "] " : "";
  rank.out = std::make_unique<LineRelay>(std::move(out.read), STDOUT_FILENO, prefix);
  rank.err = std::make_unique<LineRelay>(std::move(err.read), STDERR_FILENO, prefix);
}

// The supervision loop: forwards output, notices ranks ending, signals and the timeout, and stops the job.
class Supervisor {
 public:
  Supervisor(RankSet& ranks, SignalRelay& signals, const LaunchOptions& options)
      : ranks_(ranks), signals_(signals), options_(options) {}

  int run() {
    if (options_.timeout.count() > 0) job_deadline_.emplace(options_.timeout);
    while (true) {
      signals_.drain();
      handle_stop_signals();
      reap_exited();
      if (!stopping_ && job_deadline_ && job_deadline_->expired() && !all_reaped()) on_timeout();
      if (stopping_ && !killed_ && grace_deadline_->expired()) escalate_to_kill();
      if (all_reaped()) {
        // Stopping anyway: what the ranks left behind gets no grace of its own.
        if (stopping_ && !killed_) escalate_to_kill();
        if (!any_stream_open()) break;
        // Children the ranks left behind still hold the pipes: give them a moment, then they are killed.
        if (!drain_deadline_) drain_deadline_.emplace(kDrainAfterExit);
        if (drain_deadline_->expired()) break;
      } else if (killed_ && reap_deadline_->expired()) {
        report("warning: " + list_running() + " still running " +
               std::to_string(std::chrono::duration_cast<std::chrono::seconds>(kReapAfterKill).count()) +
               " s after SIGKILL; giving up on them");
        break;
      }
      poll_and_forward(poll_timeout_ms());
    }
    for (auto& rank : ranks_.ranks) {
      rank.out->finish();
      rank.err->finish();
    }
    return result_.value_or(0);
  }

 private:
  void handle_stop_signals() {
    while (int signal_number = signals_.take_stop_signal()) {
      if (!stopping_) {
        if (!result_) result_ = 128 + signal_number;
        report("received " + signal_name(signal_number) + "; forwarding it to the ranks");
        begin_stopping(signal_number);
      } else if (!killed_) {
        report("received " + signal_name(signal_number) + " again; killing the ranks");
        escalate_to_kill();
      }
    }
  }

  void reap_exited() {
    for (auto& rank : ranks_.ranks) {
      if (!rank.running) continue;
      int status = 0;
      pid_t got = ::waitpid(rank.pid, &status, WNOHANG);
      if (got == 0 || (got < 0 && errno == EINTR)) continue;
      if (got < 0) {
        report("warning: lost track of rank " + std::to_string(rank.rank) + ": " + std::strerror(errno));
        status = 255 << 8;  // counted as a failure: we cannot tell how it ended
      }
      rank.running = false;
      rank.wait_status = status;
      if (status != 0 && !stopping_ && options_.keep_going) {
        if (!result_) result_ = exit_code_of(status);
        std::string message =
            "rank " + std::to_string(rank.rank) + " exited with " + describe_wait_status(status);
        if (!all_reaped()) message += "; the other ranks go on (--keep-going)";
        report(message);
      } else if (status != 0 && !stopping_) {
        result_ = exit_code_of(status);
        std::string message =
            "rank " + std::to_string(rank.rank) + " exited with " + describe_wait_status(status);
        if (!all_reaped()) message += "; stopping the other ranks";
        report(message);
        begin_stopping(SIGTERM);
      }
    }
  }

  void on_timeout() {
    result_ = kExitTimeout;
    report("timeout of " + std::to_string(options_.timeout.count()) + " s expired with " + list_running() +
           " still running; stopping them");
    begin_stopping(SIGTERM);
  }

  void begin_stopping(int signal_number) {
    stopping_ = true;
    ranks_.signal_all(signal_number);
    grace_deadline_.emplace(options_.grace);
  }

  void escalate_to_kill() {
    killed_ = true;
    ranks_.signal_all(SIGKILL);
    reap_deadline_.emplace(kReapAfterKill);
  }

  bool all_reaped() const {
    for (const auto& rank : ranks_.ranks) {
      if (rank.running) return false;
    }
    return true;
  }

  bool any_stream_open() const {
    for (const auto& rank : ranks_.ranks) {
      if (rank.out->open() || rank.err->open()) return true;
    }
    return false;
  }

  std::string list_running() const {
    std::string ranks;
    int count = 0;
    for (const auto& rank : ranks_.ranks) {
      if (!rank.running) continue;
      ranks += (count++ == 0 ? "" : " ") + std::to_string(rank.rank);
    }
    return (count == 1 ? "rank " : "ranks ") + ranks;
  }

  int poll_timeout_ms() const {
    int timeout = kMaxPollMs;
    for (const auto* deadline : {&job_deadline_, &grace_deadline_, &drain_deadline_, &reap_deadline_}) {
      if (*deadline) timeout = std::min(timeout, (*deadline)->remaining_ms());
    }
    return timeout;
  }

  void poll_and_forward(int timeout_ms) {
    std::vector<pollfd> fds{{signals_.wake_fd(), POLLIN, 0}};
    std::vector<LineRelay*> relays{nullptr};
    for (auto& rank : ranks_.ranks) {
      for (auto* relay : {rank.out.get(), rank.err.get()}) {
        if (!relay->open()) continue;
        fds.push_back({relay->fd(), POLLIN, 0});
        relays.push_back(relay);
      }
    }
    int ready = ::poll(fds.data(), fds.size(), timeout_ms);
    if (ready < 0) {
      if (errno == EINTR) return;  // a signal: the loop looks at it next
      fail_errno("ferry launch: poll", errno);
    }
    for (std::size_t i = 1; i < fds.size(); ++i) {
      if (fds[i].revents & (POLLIN | POLLHUP | POLLERR)) relays[i]->on_readable();
    }
  }

  RankSet& ranks_;
  SignalRelay& signals_;
  const LaunchOptions& options_;
  std::optional<int> result_;  // decided by the first event that stops the job
  bool stopping_ = false;
  bool killed_ = false;
  std::optional<Deadline> job_deadline_;
  std::optional<Deadline> grace_deadline_;
  std::optional<Deadline> drain_deadline_;
  std::optional<Deadline> reap_deadline_;
};

// Empty when the options are usable, otherwise what is wrong with them.
std::string check_options(const LaunchOptions& options) {
  if (options.command.empty()) return "no command given: ferry launch [options] -- CMD ARGS...";
  if (options.nodes < 1) return "--nodes must be at least 1, not " + std::to_string(options.nodes);
  if (options.ranks_per_node < 1) {
    return "--ranks-per-node must be at least 1, not " + std::to_string(options.ranks_per_node);
  }
  if (static_cast<long long>(options.nodes) * options.ranks_per_node > kMaxWorldSize) {
    return "--nodes x --ranks-per-node must be at most " + std::to_string(kMaxWorldSize);
  }
  if (!options.link_gbps.empty() && !options.netns) return "--link-gbps needs --netns";
  if (options.drop_rate && !options.netns) return "--drop-rate needs --netns";
  if (options.drop_rate && !(*options.drop_rate > 0 && *options.drop_rate < 1)) {
    return "--drop-rate must be in (0, 1), not " + std::to_string(*options.drop_rate);
  }
  for (const double gbps : options.link_gbps) {
    if (!(gbps >= 0.001 && gbps <= 10000)) {
      return "--link-gbps: every rate must be in [0.001, 10000] Gbit/s, not " + std::to_string(gbps);
    }
  }
  if (options.link_gbps.size() > 1 && options.link_gbps.size() != static_cast<std::size_t>(options.nodes)) {
    return "--link-gbps takes one rate for every node or one per node: " +
           std::to_string(options.link_gbps.size()) + " rates for " + std::to_string(options.nodes) +
           " nodes";
  }
  if (options.timeout.count() < 0) return "--timeout must not be negative";
  return {};
}

// "dropped D of N packets": the faults injected, which the job survived when it exited 0.
void report_drops(const NetnsCluster& cluster, double rate) {
  try {
    const DropCounts counts = cluster.drop_counts();
    char line[160];
    std::snprintf(
        line, sizeof line, "--drop-rate %g: dropped %llu of %llu packets on the node links (%.2f%%)", rate,
        static_cast<unsigned long long>(counts.dropped), static_cast<unsigned long long>(counts.sent),
        counts.sent > 0 ? 100.0 * static_cast<double>(counts.dropped) / static_cast<double>(counts.sent)
                        : 0.0);
    report(line);
  } catch (const std::exception& e) {
    report(std::string("warning: cannot read the drop counters: ") + user_message(e));
  }
}

// Two pipe ends per rank stay open in the launcher; raise the soft limit when the default would not do.
std::optional<rlimit> raise_file_limit(int world_size) {
  rlimit limit{};
  if (::getrlimit(RLIMIT_NOFILE, &limit) != 0) return std::nullopt;
  const rlim_t needed = static_cast<rlim_t>(2 * world_size + 64);
  if (limit.rlim_cur >= needed) return std::nullopt;
  rlimit raised = limit;
  raised.rlim_cur = std::min(limit.rlim_max, needed);
  if (::setrlimit(RLIMIT_NOFILE, &raised) != 0) return std::nullopt;
  return limit;
}

// store_listener: where the store's listening socket is kept (without --netns), open until rank 0 runs.
JobSpec make_job(const LaunchOptions& options, const NetnsCluster* cluster, UniqueFd& store_listener) {
  JobSpec job;
  job.nodes = options.nodes;
  job.ranks_per_node = options.ranks_per_node;
  job.secret = random_hex(32);
  job.job_id = "ferry-" + std::to_string(::getpid()) + "-" + random_hex(8);
  for (int node = 0; node < options.nodes; ++node) {
    job.node_addresses.push_back(cluster != nullptr ? cluster->node_address(node) : "127.0.0.1");
  }
  job.store_host = job.node_addresses[0];
  if (cluster != nullptr) {
    // Node 0's network namespace is the job's own: no other process can bind there.
    job.store_port = kNetnsStorePort;
    job.master_port = kNetnsMasterPort;
    job.node_interface = "eth0";  // NetnsCluster names every node's link so (netns.hpp)
  } else {
    store_listener = listen_on_free_port();
    job.store_fd = store_listener.get();
    job.store_port = bound_port(job.store_fd);
    job.master_port = free_loopback_port();
  }
  return job;
}

}  // namespace

int run_launch(const LaunchOptions& options) {
  if (auto problem = check_options(options); !problem.empty()) {
    report(problem);
    return kExitUsage;
  }
  NetnsCluster::Options cluster_options;
  cluster_options.nodes = options.nodes;
  if (options.link_gbps.size() == 1) {
    cluster_options.link_gbps.assign(static_cast<std::size_t>(options.nodes), options.link_gbps[0]);
  } else {
    cluster_options.link_gbps = options.link_gbps;
  }
  cluster_options.drop_rate = options.drop_rate;
  cluster_options.interrupted = [] { return SignalRelay::first_stop_signal() != 0; };
  if (options.netns) {
    try {
      NetnsCluster::check_prerequisites(cluster_options);
    } catch (const Error& e) {
      report(user_message(e));
      return kExitUsage;
    }
  }

  // From here on a signal no longer kills the launcher: it is noticed, and everything is torn down in order.
  SignalRelay signals;
  // Orphaned grandchildren of the ranks become our children, so that they can be reaped, not left behind.
  ::prctl(PR_SET_CHILD_SUBREAPER, 1);
  auto original_nofile = raise_file_limit(options.nodes * options.ranks_per_node);

  try {
    std::unique_ptr<NetnsCluster> cluster;  // destroyed last: after every rank is gone
    if (options.netns) {
      NetnsCluster::collect_stale();
      cluster = std::make_unique<NetnsCluster>(cluster_options);
    }
    UniqueFd store_listener;
    JobSpec job = make_job(options, cluster.get(), store_listener);
    auto dev_null = open_dev_null();
    SpawnContext context;
    context.command = options.command;
    context.cluster = cluster.get();
    context.dev_null = dev_null.get();
    context.original_nofile = original_nofile ? &*original_nofile : nullptr;
    context.prefix_output = options.prefix_output;

    int exit_code = 0;
    {
      RankSet ranks;
      ranks.ranks.resize(static_cast<std::size_t>(job.world_size()));
      for (int rank = 0; rank < job.world_size(); ++rank) {
        spawn_rank(job, rank, context, ranks.ranks[static_cast<std::size_t>(rank)]);
        if (rank == 0 && store_listener) {
          // Rank 0 has its own copy now: connections must not queue on a socket nobody will accept from.
          store_listener.reset();
          job.store_fd = -1;
        }
      }
      exit_code = Supervisor(ranks, signals, options).run();
    }
    if (cluster && options.drop_rate) report_drops(*cluster, *options.drop_rate);
    reap_all_children(kFinalReap);
    // A rank killed between creating its shm segment and unlinking it leaves the segment behind: the
    // launcher knows the job and removes what is left once every rank is gone.
    ferry::transport::remove_shm_segments(job.job_id);
    return exit_code;
  } catch (const std::exception& e) {
    report(user_message(e));
    reap_all_children(kFinalReap);
    if (int signal_number = SignalRelay::first_stop_signal()) return 128 + signal_number;
    return kExitSetupFailed;
  }
}

}  // namespace ferry::tools::launch
