// A fabric between virtual ranks of one process that share one GPU: the GPU twin of the in-process world that
// LocalCluster uses. Every rank's registered regions live in device memory of the same GPU; a put is a
// device-to-device cudaMemcpyAsync on the sending fabric's own stream, so the copy engines move the bytes and
// no SM is needed (the dispatch kernel may occupy every SM while it spins waiting for these very puts).
//
//   DeviceCopyWorld world(4, /*device=*/0);
//   auto fabric = world.make_fabric(rank);        // one per rank, each driven by one thread (its proxy)
//   RegionId id = fabric->register_region(nullptr, bytes, MemoryKind::cuda);   // or a cudaMalloc'd pointer
//   fabric->connect();                             // every rank, before any operation that targets it
//
// Semantics are fabric.hpp's, with these particulars:
// - Set-up needs no store: all fabrics of a world see each other's regions. connect() does not wait for the
//   other ranks (one thread may set up every rank in turn); it checks that this rank registered as many
//   regions as every rank connected before it, so the last rank to connect checks them all. An operation that
//   targets a rank that has not connected yet throws Errc::invalid_argument naming it.
// - Signals. A host thread cannot add atomically to device memory, and a kernel launched to do the add could
//   wait behind a kernel that fills the GPU. So the fabric keeps each signal word's value on the host and,
//   after the payload, copies the new value into the word from pinned host memory on the same stream (stream
//   order puts the payload first). The value starts from what the word holds when this fabric first signals
//   it (read once, then). This implies one rule, enforced: a word signalled through a device_copy fabric is
//   changed only through it, and by one source rank (a second source rank throws Errc::invalid_argument
//   naming both); nothing else may write it (a kernel that also writes it breaks the count). Kernels read
//   such words with acquire loads (ld.acquire.gpu or .sys) and then the payload.
// - fetch_add returns the host-kept value and waits until the new one has landed.
// - completed() advances in progress(), from CUDA events recorded on the stream; flush() polls the stream
//   until it is idle, never longer than the world's timeout (then Errc::timeout). No call blocks in CUDA
//   without a deadline.
// - A CUDA failure is thrown as Errc::system naming the call; after it, or after a timeout, the fabric is
//   broken and every later call throws the same error.
// - Destroy a fabric only after every rank and kernel has stopped using its regions (it frees the ones it
//   allocated). The world may go first: its fabrics keep what they share alive.
#pragma once

#include <memory>

#include "ferry/core/deadline.hpp"
#include "ferry/transport/fabric.hpp"

namespace ferry::transport {

namespace detail {
struct DeviceCopyShared;
}

class DeviceCopyWorld {
 public:
  // `num_ranks` virtual ranks whose regions live on GPU `device`; every wait of its fabrics ends after
  // `timeout`. Throws Errc::invalid_argument for num_ranks < 1 or a device this process does not see, and
  // Errc::unsupported (with the reason) in builds without CUDA or where no GPU is usable.
  DeviceCopyWorld(int num_ranks, int device, Duration timeout = kDefaultTimeout);
  ~DeviceCopyWorld();
  DeviceCopyWorld(const DeviceCopyWorld&) = delete;
  DeviceCopyWorld& operator=(const DeviceCopyWorld&) = delete;

  int num_ranks() const;
  int device() const;

  // The fabric of `rank` (kind device_copy). One per rank: a second call for the same rank throws
  // Errc::invalid_argument, as does a rank outside [0, num_ranks).
  std::unique_ptr<Fabric> make_fabric(int rank);

 private:
  std::shared_ptr<detail::DeviceCopyShared> shared_;
};

}  // namespace ferry::transport
