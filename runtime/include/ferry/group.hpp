// ferry::Group — who am I, who are my peers, and how do we talk before any fabric exists.
//
// A Group is built from the environment a launcher leaves behind (ferry launch, torchrun, Open MPI, Slurm),
// starts (on rank 0) or joins the bootstrap store, gathers every rank's view and validates that the cluster's
// layout is consistent: R = N nodes × L local ranks, rank = node·L + local_rank, the same L on every node.
//
//   auto group = ferry::Group::from_env();
//   std::printf("rank %d of %d on node %d\n", group.rank(), group.world_size(), group.node());
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "ferry/core/deadline.hpp"

namespace ferry {

namespace transport {
class Store;
class StoreWatch;
}  // namespace transport

// Where the job's identity came from.
enum class Launcher { single, ferry, torchrun, openmpi, slurm };
const char* to_string(Launcher launcher);

// Where the bootstrap store's secret comes from. The store holds every rank's fabric addresses and memory
// keys, so the secret is what stands between another user of the network and the job's registered memory.
enum class SecretSource {
  environment,     // FERRY_SECRET: ferry launch sets it; other launchers' multi-node jobs must (see below)
  private_random,  // a one-rank job: a random secret nobody else needs
  // A one-node job of another launcher without FERRY_SECRET: rank 0 makes a random secret and hands it to
  // the other ranks through a file only this user can read (runtime/src/secret_handoff.cpp), and the store
  // listens on loopback only. A multi-node job without FERRY_SECRET is refused instead: no channel private
  // to the job reaches the other hosts.
  local_handoff,
};

// The job as the environment describes it, before anyone has talked to anyone.
struct JobEnv {
  Launcher launcher = Launcher::single;
  int rank = 0;
  int world_size = 1;
  int local_rank = 0;
  int local_size = 1;
  std::string store_host = "127.0.0.1";
  std::uint16_t store_port = 0;  // 0: single process, or port_handoff: the store picks a free port
  // A one-node job of Open MPI or Slurm that names no store endpoint (`mpirun -np 4 ferry ...` on one box):
  // rank 0 binds 127.0.0.1 at a port of the kernel's choice and hands it over to the other ranks with the
  // secret (runtime/src/secret_handoff.cpp), so nobody has to pick a port by hand.
  bool port_handoff = false;
  // A bound, listening socket for rank 0's store (FERRY_STORE_FD: `ferry launch` binds the port once and
  // hands the socket over, so nobody can take the port in between); -1 when rank 0 binds it itself.
  int store_fd = -1;
  // Never empty in a Group's job(); here empty with SecretSource::local_handoff (until rank 0 has handed it
  // over) or in a one-rank job (from_job makes a random one).
  std::string secret;
  SecretSource secret_source = SecretSource::environment;
  std::string job_id;
  std::string node_address;  // FERRY_NODE_ADDR when a launcher set it

  int node() const { return rank / local_size; }
  int num_nodes() const { return world_size / local_size; }
};

// Reads the job from `lookup` (the process environment by default). Precedence: FERRY_*, torchrun
// (RANK/WORLD_SIZE/LOCAL_RANK/LOCAL_WORLD_SIZE/MASTER_ADDR/MASTER_PORT), Open MPI (OMPI_COMM_WORLD_*), Slurm
// (SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID/SLURM_NTASKS_PER_NODE). No variables at all: a single-rank job.
// Throws Errc::invalid_argument naming the variable when a value is not a whole number or above
// kMaxWorldSize, when the layout is inconsistent or incomplete, when FERRY_SECRET is set but empty, and when
// a job on several nodes has no FERRY_SECRET (the message says how to set one) or no store endpoint.
inline constexpr int kMaxWorldSize = 65536;  // ranks travel as 16-bit numbers in the proxy's commands
using EnvLookup = std::function<std::optional<std::string>(const char* name)>;
JobEnv resolve_job_env(const EnvLookup& lookup);
JobEnv resolve_job_env();

// One rank as its peers see it.
struct RankInfo {
  int rank = 0;
  int node = 0;
  int local_rank = 0;
  std::string hostname;
  std::string address;  // the IP address this rank uses to reach the others
  int pid = 0;
};

struct GroupOptions {
  Duration timeout = kDefaultTimeout;  // deadline of every bootstrap wait
};

class Group {
 public:
  static Group from_env(const GroupOptions& options = {});
  static Group from_job(const JobEnv& job, const GroupOptions& options = {});

  Group(Group&&) noexcept;
  Group& operator=(Group&&) noexcept;
  ~Group();

  int rank() const;
  int world_size() const;
  int node() const;
  int num_nodes() const;
  int local_rank() const;
  int local_size() const;
  const JobEnv& job() const;
  const std::vector<RankInfo>& ranks() const;  // every rank's view, indexed by rank

  // Collectives over the bootstrap store (slow path: set-up and control, never the data plane). `name`
  // identifies the call site; repeated calls with one name are separate rounds.
  void barrier(const std::string& name);
  std::vector<std::vector<std::uint8_t>> all_gather(const std::string& name,
                                                    std::span<const std::uint8_t> mine);

  // The bootstrap store itself, for ferry's own layers (transport set-up exchanges keys through it). A
  // sub-group's store is its own connection, with every key under the sub-group's prefix.
  transport::Store& store();
  // What the store knows of the job's failure, for ferry's own layers: the data path asks it while it waits
  // for a peer, and reports its own failures through it, so that every rank learns of a failure within
  // moments and names the same cause. Shared by a job's Group and its sub-groups; null in a one-rank job.
  std::shared_ptr<transport::StoreWatch> failure_watch() const;
  // The same watch for this group's own ranks: its lost_words() are numbered as this group's ranks (those the
  // store counted dead). The job's failure_watch() for the whole job and for a sub-group of every rank; for a
  // smaller sub-group a watch of its own (a thread and a store connection, made on the first call: it throws
  // Errc::peer_failure if the store is gone by then), since the store counts a sub-group's lost ranks under
  // the sub-group's prefix and numbering. Null in a one-rank group.
  std::shared_ptr<transport::StoreWatch> member_watch();
  // This group's ranks as ranks of the whole job, in rank order (a sub-group's members, through every split).
  const std::vector<int>& job_ranks() const;

  // A sub-group made of some of this group's ranks, e.g. the expert-parallel group of one pipeline stage:
  //
  //   auto ep = group.split("stage" + std::to_string(stage), stage_ranks);   // on the members only
  //   ferry::Buffer buffer(ep, config);
  //
  // Collective over `members` only: every member calls it with the same name and members, the other ranks
  // don't. Repeated calls with one name are separate rounds (so a sub-group may be rebuilt), as long as every
  // member makes the same sequence of calls. members: ranks of this group, ascending, no duplicates,
  // including the caller, the same number of them on every node they touch. Sub-ranks are numbered in member
  // order, nodes in order of first appearance; ranks() is this group's RankInfo renumbered.
  //
  // name: letters, digits and '_' (it ends up in shm segment names, which fold every other character). The
  // sub-group's job id is "<this job id>.<name>", so the transports built on it (Buffer, fabrics, shm
  // segments) never collide with this group's or a sibling's; siblings therefore need distinct names, and a
  // second sub-group claiming a name (in the same round) fails on all its members. The sub-group reaches this
  // group's bootstrap store through its own connection, under its own key prefix, so collectives of the
  // same names in this group and in sub-groups run side by side. This group must outlive it (the job's rank 0
  // hosts the store until the whole job has checked out). Throws Errc::invalid_argument naming the problem
  // with name or members; a member list the members disagree on times out.
  Group split(const std::string& name, std::span<const int> members);

 private:
  struct Impl;
  explicit Group(std::unique_ptr<Impl> impl);
  // from_job() and split() both end here: connects to the store named by job (hosting it first when
  // `host_store`), with `key_prefix` on every key, joins the store's membership as job.rank of the group
  // `key_prefix`, gathers every rank's view and validates the layout. A non-empty `refusal` from rank 0 fails
  // every rank with that message once all have joined. `watch`: the job's failure watch (a sub-group shares
  // its root's; the root makes one when null).
  static Group join(const JobEnv& job, const GroupOptions& options, bool host_store,
                    const std::string& key_prefix, const std::string& refusal,
                    std::shared_ptr<transport::StoreWatch> watch);
  // What split() (group_split.cpp, which cannot see Impl) needs of this group.
  const std::string& key_prefix() const;
  std::uint16_t store_port() const;  // the port this group's connection reached; rank 0's job may say 0
  std::uint64_t next_split_round(const std::string& name);
  void set_job_ranks(std::vector<int> job_ranks);

  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry
