// POSIX shared memory peer regions: create own segment, exchange names through the store, map every peer's
// segment, node barrier, unlink own. See peer_memory.hpp for the contract.
#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "fabric/fabric_common.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/peer_memory.hpp"

namespace ferry::transport {
namespace {

constexpr std::size_t kMaxJobIdLength = 100;
constexpr std::size_t kMaxTagLength = 48;

// Keeps [A-Za-z0-9_.] and turns everything else (including '-', our field separator, and '/') into '_', so a
// name splits unambiguously into its fields and one job's prefix never matches another job's segments.
std::string sanitize(const std::string& text, const char* what, std::size_t max_length) {
  if (text.empty()) fail(Errc::invalid_argument, std::string("shm peer memory: ") + what + " is empty");
  if (text.size() > max_length) {
    fail(Errc::invalid_argument, std::string("shm peer memory: ") + what + " '" + text + "' is longer than " +
                                     std::to_string(max_length) + " characters");
  }
  std::string out = text;
  for (char& c : out) {
    bool keep =
        (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' || c == '.';
    if (!keep) c = '_';
  }
  return out;
}

// An owned file descriptor.
class Fd {
 public:
  explicit Fd(int fd) : fd_(fd) {}
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// An owned shared mapping.
class Mapping {
 public:
  Mapping() = default;
  Mapping(void* base, std::size_t bytes) : base_(base), bytes_(bytes) {}
  ~Mapping() {
    if (base_ != nullptr) munmap(base_, bytes_);
  }
  Mapping(Mapping&& other) noexcept : base_(other.base_), bytes_(other.bytes_) { other.base_ = nullptr; }
  Mapping& operator=(Mapping&&) = delete;
  Mapping(const Mapping&) = delete;
  void* base() const { return base_; }

 private:
  void* base_ = nullptr;
  std::size_t bytes_ = 0;
};

// Unlinks a segment name when set-up fails before the regular unlink, so a failed set-up leaves nothing
// behind.
class UnlinkGuard {
 public:
  explicit UnlinkGuard(std::string name) : name_(std::move(name)) {}
  ~UnlinkGuard() {
    if (armed_) shm_unlink(name_.c_str());
  }
  UnlinkGuard(const UnlinkGuard&) = delete;
  UnlinkGuard& operator=(const UnlinkGuard&) = delete;
  // Leaves the name alone (it was not ours, or is now someone else's to unlink).
  void disarm() { armed_ = false; }
  void unlink_now() {
    if (!armed_) return;
    armed_ = false;
    if (shm_unlink(name_.c_str()) != 0) fail_errno("shm peer memory: shm_unlink(" + name_ + ")", errno);
  }

 private:
  std::string name_;
  bool armed_ = true;
};

Mapping map_segment(int fd, const std::string& name, std::size_t bytes) {
  void* base = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (base == MAP_FAILED) {
    fail_errno("shm peer memory: mmap of segment " + name + " (" + std::to_string(bytes) + " bytes)", errno);
  }
  return Mapping(base, bytes);
}

// Creates, sizes and maps this rank's own segment. The pages are reserved up front (posix_fallocate), so a
// full /dev/shm is an error here rather than a SIGBUS on first touch.
Mapping create_own_segment(const std::string& name, std::size_t bytes, bool reserve) {
  int raw = shm_open(name.c_str(), O_CREAT | O_EXCL | O_RDWR, 0600);
  if (raw < 0) {
    int err = errno;
    if (err == EEXIST) {
      fail(Errc::system,
           "shm peer memory: segment " + name +
               " already exists: another job runs with the same job id and tag, or a crashed one "
               "left it behind (remove /dev/shm" +
               name + ")");
    }
    fail_errno("shm peer memory: shm_open(" + name + ", O_CREAT)", err);
  }
  Fd fd(raw);
  UnlinkGuard unlink_on_failure(
      name);  // armed only now: an EEXIST above must not remove a stranger's segment
  if (ftruncate(fd.get(), static_cast<off_t>(bytes)) != 0) {
    fail_errno("shm peer memory: ftruncate of segment " + name + " to " + std::to_string(bytes) + " bytes",
               errno);
  }
  int err = reserve ? posix_fallocate(fd.get(), 0, static_cast<off_t>(bytes)) : 0;
  if (err == ENOSPC) {
    fail(Errc::system, "shm peer memory: /dev/shm has no room for segment " + name + " of " +
                           std::to_string(bytes) + " bytes (see df /dev/shm)");
  }
  // Filesystems without fallocate support (EOPNOTSUPP) still work; pages are then allocated on first touch.
  if (err != 0 && err != EOPNOTSUPP && err != EINVAL) {
    fail_errno("shm peer memory: posix_fallocate of segment " + name, err);
  }
  Mapping mapping = map_segment(fd.get(), name, bytes);
  unlink_on_failure.disarm();  // the caller's guard takes over
  return mapping;
}

Mapping open_peer_segment(const std::string& name, std::size_t bytes, int peer_rank) {
  int raw = shm_open(name.c_str(), O_RDWR, 0);
  if (raw < 0) {
    fail_errno("shm peer memory: shm_open of segment " + name + " of rank " + std::to_string(peer_rank),
               errno);
  }
  Fd fd(raw);
  struct stat info {};
  if (fstat(fd.get(), &info) != 0) fail_errno("shm peer memory: fstat of segment " + name, errno);
  if (static_cast<std::size_t>(info.st_size) != bytes) {
    fail(Errc::protocol, "shm peer memory: segment " + name + " of rank " + std::to_string(peer_rank) +
                             " has " + std::to_string(info.st_size) + " bytes, expected " +
                             std::to_string(bytes));
  }
  return map_segment(fd.get(), name, bytes);
}

class ShmPeerMemory final : public PeerMemory {
 public:
  ShmPeerMemory(std::vector<Mapping> mappings, int local_rank, std::size_t bytes)
      : mappings_(std::move(mappings)), local_rank_(local_rank), bytes_(bytes) {}

  void* local() override { return mappings_[static_cast<std::size_t>(local_rank_)].base(); }
  void* peer(int local_rank) override {
    if (local_rank < 0 || local_rank >= static_cast<int>(mappings_.size())) {
      fail(Errc::invalid_argument, "shm peer memory: local rank " + std::to_string(local_rank) +
                                       " is outside the node's " + std::to_string(mappings_.size()) +
                                       " ranks");
    }
    return mappings_[static_cast<std::size_t>(local_rank)].base();
  }
  std::size_t bytes() const override { return bytes_; }
  MemoryKind kind() const override { return MemoryKind::host; }

 private:
  std::vector<Mapping> mappings_;
  int local_rank_;
  std::size_t bytes_;
};

void check_peers(const Peers& peers, const char* who) {
  if (peers.store == nullptr) fail(Errc::invalid_argument, std::string(who) + ": Peers::store is null");
  if (peers.local_size < 1 || peers.local_rank < 0 || peers.local_rank >= peers.local_size) {
    fail(Errc::invalid_argument, std::string(who) + ": local rank " + std::to_string(peers.local_rank) +
                                     " is outside the node's " + std::to_string(peers.local_size) + " ranks");
  }
}

}  // namespace

std::string shm_segment_prefix(const std::string& job_id) {
  return "ferry-" + sanitize(job_id, "job id", kMaxJobIdLength) + "-";
}

std::string shm_segment_name(const std::string& job_id, int node, int local_rank, const std::string& tag) {
  return "/" + shm_segment_prefix(job_id) + std::to_string(node) + "-" + std::to_string(local_rank) + "-" +
         sanitize(tag, "tag", kMaxTagLength);
}

std::vector<std::string> list_shm_segments(const std::string& job_id) {
  const std::string prefix = shm_segment_prefix(job_id);
  std::vector<std::string> found;
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir("/dev/shm"), closedir);
  if (!dir) return found;
  while (const dirent* entry = readdir(dir.get())) {
    if (std::strncmp(entry->d_name, prefix.c_str(), prefix.size()) == 0) found.emplace_back(entry->d_name);
  }
  return found;
}

std::vector<std::string> remove_shm_segments(const std::string& job_id) {
  auto found = list_shm_segments(job_id);
  for (const auto& name : found) shm_unlink(("/" + name).c_str());
  return found;
}

std::unique_ptr<PeerMemory> make_shm_peer_memory(const Peers& peers, std::size_t bytes,
                                                 const std::string& tag, bool reserve) {
  check_peers(peers, "shm peer memory");
  if (bytes == 0) fail(Errc::invalid_argument, "shm peer memory: bytes is 0");
  const std::string own_name = shm_segment_name(peers.job_id, peers.node(), peers.local_rank, tag);
  const std::string node_key =
      "ferry/shm/" + sanitize(tag, "tag", kMaxTagLength) + "/node" + std::to_string(peers.node());

  Mapping own = create_own_segment(own_name, bytes, reserve);
  UnlinkGuard unlink_guard(own_name);

  detail::BlobWriter writer;
  writer.u64(bytes);
  writer.bytes(own_name.data(), own_name.size());
  auto all = peers.store->all_gather(node_key + "/names", peers.local_rank, peers.local_size, writer.take(),
                                     peers.timeout);

  std::vector<Mapping> mappings;
  mappings.reserve(all.size());
  for (int local = 0; local < peers.local_size; ++local) {
    const int peer_rank = peers.rank_of(peers.node(), local);
    detail::BlobReader reader(all[static_cast<std::size_t>(local)],
                              "shm peer memory descriptor of rank " + std::to_string(peer_rank));
    std::uint64_t peer_bytes = reader.u64();
    Bytes name_bytes = reader.bytes();
    reader.expect_end();
    if (peer_bytes != bytes) {
      fail(Errc::invalid_argument, "shm peer memory '" + tag + "': rank " + std::to_string(peer_rank) +
                                       " asked for " + std::to_string(peer_bytes) + " bytes but rank " +
                                       std::to_string(peers.rank) + " for " + std::to_string(bytes) +
                                       "; every local rank must ask for the same");
    }
    if (local == peers.local_rank) {
      mappings.push_back(std::move(own));
    } else {
      mappings.push_back(
          open_peer_segment(std::string(name_bytes.begin(), name_bytes.end()), bytes, peer_rank));
    }
  }
  // Everyone has mapped everyone: the names are no longer needed, and unlinking now means no crash from here
  // on can leave anything in /dev/shm.
  peers.store->barrier(node_key + "/mapped", peers.local_rank, peers.local_size, peers.timeout);
  unlink_guard.unlink_now();
  return std::make_unique<ShmPeerMemory>(std::move(mappings), peers.local_rank, bytes);
}

}  // namespace ferry::transport
