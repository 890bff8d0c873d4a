// Handing rank 0's store secret, and its port, to the other ranks of a one-node job, for launchers that do
// not give every rank a secret of their own (torchrun, Open MPI, Slurm without FERRY_SECRET:
// SecretSource::local_handoff) or name no store endpoint (`mpirun -np 4 ferry ...` on one box, without
// MASTER_ADDR/MASTER_PORT: JobEnv::port_handoff, where rank 0 binds a port of the kernel's choice).
//
// Both travel through a file in a directory only this user can enter (/tmp/ferry-<uid>, created 0700
// and checked: owned by us, no access for group or others, not a symlink), written 0600 and renamed into
// place, so a reader sees all of it or nothing: "<secret> <port> <rank 0's pid>". Its name is derived from
// the store port (or "any" when the port is handed over) and the job id, which every rank knows. Rank 0
// removes it once every rank has joined (or when it fails), so it lives seconds. A file left by a crashed
// job is simply replaced; one whose rank 0 is no longer running is ignored; a rank that read a stale secret
// is refused by the store and reads the file again (await_handoff's `rejected`).
#pragma once

#include <cstdint>
#include <string>

#include "ferry/core/deadline.hpp"
#include "ferry/group.hpp"

namespace ferry::detail {

// 128 random bits as 32 hex digits, from the kernel's random source.
std::string make_secret();

// Where `job`'s secret and port are handed over.
std::string handoff_path(const JobEnv& job);

// What rank 0 handed over.
struct Handoff {
  std::string secret;
  std::uint16_t port = 0;
};

// Rank 0's side: publishes the secret and the store's port on construction, removes the file on destruction
// (or earlier, with withdraw()).
class SecretHandoff {
 public:
  SecretHandoff(const JobEnv& job, const std::string& secret, std::uint16_t port);
  ~SecretHandoff();
  SecretHandoff(const SecretHandoff&) = delete;
  SecretHandoff& operator=(const SecretHandoff&) = delete;

  void withdraw() noexcept;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The other ranks' side: waits until the file exists, was written by a rank 0 that still runs, and holds a
// secret other than `rejected` (one the store already refused), and returns what it holds. Throws
// Errc::timeout naming the file and the way out (FERRY_SECRET, or MASTER_ADDR/MASTER_PORT) when `deadline`
// passes first, Errc::invalid_argument when the file or its directory is not private to this user.
Handoff await_handoff(const JobEnv& job, const Deadline& deadline, const std::string& rejected = {});
inline std::string await_secret(const JobEnv& job, const Deadline& deadline,
                                const std::string& rejected = {}) {
  return await_handoff(job, deadline, rejected).secret;
}

}  // namespace ferry::detail
