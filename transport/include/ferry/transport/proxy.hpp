// The proxy: threads that turn commands posted into command rings (command_ring.hpp) into fabric operations.
//
//   std::vector<std::unique_ptr<Fabric>> fabrics;
//   fabrics.push_back(make_fabric(peers, {}));   // register regions, connect() ... before handing it over
//   Proxy proxy(std::move(fabrics), {.rings = 2});
//   auto& ring = proxy.ring(0);                 // one producer thread per ring
//   ring.post(make_put_signal(peer, 0, src, dst, bytes, signal, 1));
//   ring.wait_completed(ring.posted());         // source bytes may be reused now
//
// Threads and fabrics: a Fabric is single-threaded, so every proxy thread owns its own Fabric instance (the
// caller creates them, collectively, one per thread, and registers the same regions in each); thread t drives
// fabrics[t] and drains rings t, t + T, t + 2T, ... round-robin. Region ids in a command refer to the fabric
// of the thread that drains its ring. We chose one fabric per thread over one shared fabric behind a lock
// because a lock would serialize the threads on every operation, which is what several threads are meant to
// avoid.
//
// Each thread bounds the operations it has handed to its fabric and not yet seen complete (max_in_flight): at
// the bound it stops draining and only progresses the fabric. It calls fabric->progress() on every pass, also
// when idle (tcp targets only move bytes while they progress), and backs off (spin, yield, sleep) when
// nothing moved, so idle proxies do not eat the cores of a crowded CI machine.
//
// Failure: when the fabric throws (or a command is malformed), the thread records the error — code and
// message naming thread, ring and command — in every ring it drains and stops. Producer waits (for credit or
// completion) see the error and throw ferry::Error with that message; every producer wait also has a deadline
// (ProxyOptions::timeout). A producer never hangs on a dead proxy. A fabric created with
// FabricOptions::isolate_peer_failures does not throw for one failed peer: the proxy goes on (commands to
// that peer complete without sending) and publishes the peer in failed_peers(), which any thread may read.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/transport/command_ring.hpp"
#include "ferry/transport/fabric.hpp"

namespace ferry::transport {

// Where ring memory comes from. automatic: pinned and mapped into the GPU's address space (cudaHostAlloc)
// when this build has CUDA and a GPU is present, else ordinary page-aligned host memory (never mlock-ed:
// ulimit -l is small on CI machines). host: always ordinary memory (CPU producers only; no CUDA context is
// created). cuda_mapped: pinned and mapped, or throw Errc::unsupported.
enum class RingMemory { automatic, host, cuda_mapped };

struct ProxyOptions {
  int rings = 1;                    // producer rings; ring i is drained by thread i % (number of fabrics)
  std::uint32_t ring_slots = 1024;  // commands per ring, a power of two
  std::size_t max_in_flight = 256;  // per proxy thread: posted to its fabric and not yet completed
  RingMemory memory = RingMemory::automatic;
  Duration timeout = kDefaultTimeout;  // deadline of every producer wait
  // >= 0: each proxy thread makes this GPU current before its first command (CUDA builds). A fabric moving
  // device memory may act in the calling thread's CUDA context (UCX's cuda_copy/cuda_ipc transports do):
  // without one it fails, or lands on GPU 0's.
  int device = -1;
};

// The producer's handle on one ring. Exactly one thread may post to a ring (single producer); completed(),
// check_error() and the views may be read from anywhere.
class ProducerRing {
 public:
  ProducerRing(const ProducerRing&) = delete;
  ProducerRing& operator=(const ProducerRing&) = delete;

  // Publishes one command, waiting for a free slot (credit) when the ring is full. Throws the proxy's error
  // when it has failed, and Errc::timeout naming ring, head and tail when no slot frees up before the
  // deadline.
  void post(const Command& command);
  // Publishes without waiting; false when the ring is full. Throws the proxy's error when it has failed.
  bool try_post(const Command& command);

  std::uint64_t posted() const { return producer_.tail; }
  // Commands of this ring whose fabric operation has completed (in posting order).
  std::uint64_t completed() const;
  // Waits until completed() >= count. Throws the proxy's error, or Errc::timeout naming the ring and
  // counters.
  void wait_completed(std::uint64_t count);
  // Throws ferry::Error carrying the proxy's code and message when the proxy thread draining this ring
  // failed.
  void check_error() const;

  int index() const { return index_; }
  std::uint32_t capacity() const { return producer_.ring.capacity; }
  // Host pointers to the ring (for a CPU producer that posts through CommandRingProducer itself).
  CommandRingView view() const { return producer_.ring; }
  // The ring as a CUDA kernel addresses it. Throws Errc::unsupported unless the ring memory is cuda-mapped.
  // A kernel that posts takes over this ring's producer role: do not mix it with post() on the host.
  CommandRingView device_view() const;
  bool device_mapped() const { return device_view_.slots != nullptr; }

 private:
  friend class Proxy;
  ProducerRing(int index, CommandRingView host, CommandRingView device, Duration timeout);
  [[noreturn]] void throw_error() const;
  std::string describe() const;

  int index_;
  CommandRingProducer producer_;
  CommandRingView device_view_;
  Duration timeout_;
};

class Proxy {
 public:
  // Takes one connected fabric per proxy thread (at least one) and starts the threads.
  Proxy(std::vector<std::unique_ptr<Fabric>> fabrics, const ProxyOptions& options);
  Proxy(std::unique_ptr<Fabric> fabric, const ProxyOptions& options);
  // stop(), then releases the fabrics (after the threads have joined).
  ~Proxy();
  Proxy(const Proxy&) = delete;
  Proxy& operator=(const Proxy&) = delete;

  int num_rings() const;
  int num_threads() const;
  ProducerRing& ring(int index);
  // Throws the first error any proxy thread recorded (code and message as the producer would see them).
  void check_error() const;
  // The peers the fabrics isolated so far (FabricOptions::isolate_peer_failures), each once, in the order the
  // proxy threads saw them. Any thread; failed_peer_count() is one atomic load.
  std::size_t failed_peer_count() const;
  std::vector<FailedPeer> failed_peers() const;
  // Commands proxy thread `thread` has handed to its fabric so far (for throughput reports).
  std::uint64_t commands_executed(int thread) const;
  // Stops and joins the threads (idempotent). Commands not yet executed are dropped; waits on rings that are
  // not complete then fail with "proxy stopped" rather than time out. Wait for completion first to keep them.
  void stop();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::transport
