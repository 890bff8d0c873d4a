// The memory a host executor runs over, behind two small interfaces so the same executor runs in one process
// (LocalWorld: every rank's buffer in this address space) and across processes (shm peer memory for the ranks
// of a node, the proxy's command ring and a fabric for the others).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>

namespace ferry::kernels::host {

// Intra-node peer memory (the NVLink path): the registered buffer of every local rank of this node, this
// rank's own included, mapped into this process.
class NodeMemory {
 public:
  virtual ~NodeMemory() = default;
  virtual std::byte* base(int local_rank) const = 0;
};

// One-sided writes into the registered buffers of ranks on other nodes; offsets are the same in every rank's
// buffer. A writer belongs to one worker thread. Ordering contract: a signal becomes visible at the target
// only after every earlier put of the same writer to that target has landed. Writers never block: what they
// cannot hand over at once (the proxy's command ring is full) they keep, in order, and pass on at the next
// call or at flush(), which the executor calls between steps.
class RemoteWriter {
 public:
  virtual ~RemoteWriter() = default;
  virtual void put(int rank, std::size_t src_offset, std::size_t dst_offset, std::size_t bytes) = 0;
  // Atomically adds `add` to the 64-bit word at `word_offset` in rank's buffer.
  virtual void signal(int rank, std::size_t word_offset, std::uint64_t add) = 0;
  // Hands over what it holds without waiting; true when nothing is left. Throws when the fabric has failed.
  virtual bool flush() { return true; }
  // How many writes it holds back, for a timeout message.
  virtual std::size_t held() const { return 0; }
};

class RemoteMemory {
 public:
  virtual ~RemoteMemory() = default;
  virtual std::unique_ptr<RemoteWriter> open_writer() = 0;
};

// Whether the ranks this one exchanges with can still take part. A stalled executor calls check() now and
// then; it throws ferry::Error(Errc::peer_failure) naming a rank whose process died or whose fabric
// connection failed, so an operation fails within moments of a death instead of at its timeout.
class PeerHealth {
 public:
  virtual ~PeerHealth() = default;
  virtual void check() = 0;
};

// Everything one rank's executor needs; the pointers outlive the executor.
struct RankMemory {
  std::byte* local = nullptr;  // this rank's registered buffer (zeroed before first use)
  std::size_t bytes = 0;
  NodeMemory* node = nullptr;
  RemoteMemory* remote = nullptr;
  PeerHealth* health = nullptr;  // optional
};

}  // namespace ferry::kernels::host
