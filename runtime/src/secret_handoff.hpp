// Handing rank 0's store secret to the other ranks of a one-node job (SecretSource::local_handoff), for
// launchers that do not give every rank a secret of their own (torchrun, Open MPI, Slurm without
// FERRY_SECRET).
//
// The secret travels through a file in a directory only this user can enter (/tmp/ferry-<uid>, created 0700
// and checked: owned by us, no access for group or others, not a symlink), written 0600 and renamed into
// place, so a reader sees all of it or nothing. Its name is derived from the store port and the job id,
// which every rank knows. Rank 0 removes it once every rank has joined (or when it fails), so it lives
// seconds. A file left by a crashed job is simply replaced; a rank that read such a stale secret is refused
// by the store and reads the file again (await_secret's `rejected`).
#pragma once

#include <string>

#include "ferry/core/deadline.hpp"
#include "ferry/group.hpp"

namespace ferry::detail {

// 128 random bits as 32 hex digits, from the kernel's random source.
std::string make_secret();

// Where `job`'s secret is handed over.
std::string handoff_path(const JobEnv& job);

// Rank 0's side: publishes the secret on construction, removes the file on destruction (or earlier, with
// withdraw()).
class SecretHandoff {
 public:
  SecretHandoff(const JobEnv& job, const std::string& secret);
  ~SecretHandoff();
  SecretHandoff(const SecretHandoff&) = delete;
  SecretHandoff& operator=(const SecretHandoff&) = delete;

  void withdraw() noexcept;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// The other ranks' side: waits until the file exists and holds a secret other than `rejected` (one the store
// already refused), and returns it. Throws Errc::timeout naming the file and the way out (FERRY_SECRET) when
// `deadline` passes first, Errc::invalid_argument when the file or its directory is not private to this user.
std::string await_secret(const JobEnv& job, const Deadline& deadline, const std::string& rejected = {});

}  // namespace ferry::detail
