// Recycled device memory for the tensors a CUDA Buffer returns (recv_x, combine's out, the layout's arrays).
// cudaMalloc per call is slow and cudaFree synchronises the whole device (with ranks of one process sharing a
// GPU, a rank's thread would wait in it for another rank's kernel, which waits for this rank: a deadlock
// until the timeout); like a framework's caching allocator, freed blocks are kept and handed out again, and
// memory comes from and goes back to the device in stream order (cudaMallocAsync, cudaFreeAsync on the
// block's stream: nothing here ever synchronises the device):
//   - a block is used on the stream it was allocated for; when its last reference goes it is cached with a
//     marker (an event recorded on that stream then);
//   - for the same stream it is reusable at once (the stream runs the new work after the old);
//   - for another stream only once the marker has passed;
//   - at most `limit` bytes stay cached: past it the oldest cached blocks are released (in their stream's
//     order); when the device is out of memory every cached block is released and the allocation tried
//     again;
//   - close() (the Buffer goes) releases what is cached; blocks still held by tensors are released when their
//     last reference goes (the deleter keeps the cache object alive, never the Buffer).
// Work on OTHER streams that reads a tensor is the caller's to order: drop a tensor only after that work, or
// after the stream it ran on has been handed to the next operation (DispatchOptions::stream), as with any
// framework's caching allocator.
//
// The policy is plain C++; the CUDA calls are behind DeviceMemoryApi (device_memory.cpp), and
// tests/unit/test_device_bookkeeping.cpp drives it with a fake.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

namespace ferry::detail {

class DeviceMemoryApi {
 public:
  using Stream = void*;  // cudaStream_t
  using Marker = void*;  // a CUDA event

  virtual ~DeviceMemoryApi() = default;
  // For work on `stream` (usable there at once); nullptr when the device is out of memory; throws otherwise.
  virtual void* allocate(std::size_t bytes, Stream stream) = 0;
  // Back to the device in `stream`'s order (after the work already enqueued there), the stream the block
  // was allocated for: never a device-wide synchronisation.
  virtual void release(void* block, Stream stream) noexcept = 0;
  virtual Marker mark(Stream stream) noexcept = 0;  // recorded on `stream` now; nullptr when that failed
  virtual bool passed(Marker marker) noexcept = 0;
  virtual void forget(Marker marker) noexcept = 0;
};

struct DeviceCacheStats {
  std::size_t cached_bytes = 0;   // in blocks nobody holds
  std::size_t in_use_bytes = 0;   // in blocks tensors hold
  std::uint64_t allocations = 0;  // blocks taken from the device
  std::uint64_t reuses = 0;       // blocks handed out again
  std::uint64_t releases = 0;     // blocks given back to the device
};

class DeviceBlockCache : public std::enable_shared_from_this<DeviceBlockCache> {
 public:
  using Stream = DeviceMemoryApi::Stream;

  // Through create(): the blocks' deleters hold the cache.
  static std::shared_ptr<DeviceBlockCache> create(std::unique_ptr<DeviceMemoryApi> api, std::size_t limit);
  ~DeviceBlockCache();
  DeviceBlockCache(const DeviceBlockCache&) = delete;
  DeviceBlockCache& operator=(const DeviceBlockCache&) = delete;

  // A block of at least `bytes` (>= 1) for work on `stream`; the last reference gives it back. Throws
  // Errc::system naming the size when the device has no memory for it even with the cache emptied.
  std::shared_ptr<std::byte> allocate(std::size_t bytes, Stream stream);

  // Releases every cached block; from now on a block given back is released at once.
  void close();

  DeviceCacheStats stats() const;

  // The size a request is rounded to: 512 bytes at least, then powers of two and the midpoints between them
  // (a block wastes at most a third).
  static std::size_t size_class(std::size_t bytes);

 private:
  struct Cached {
    void* block = nullptr;
    std::size_t capacity = 0;
    Stream stream = nullptr;
    DeviceMemoryApi::Marker marker = nullptr;
    std::uint64_t age = 0;  // when it was given back: the oldest go first
  };

  DeviceBlockCache(std::unique_ptr<DeviceMemoryApi> api, std::size_t limit);
  std::shared_ptr<std::byte> wrap(void* block, std::size_t capacity, Stream stream);
  void give_back(void* block, std::size_t capacity, Stream stream) noexcept;
  void* take_cached(std::size_t capacity, Stream stream);
  void release(std::vector<Cached>& blocks) noexcept;  // outside the lock (CUDA calls)

  std::unique_ptr<DeviceMemoryApi> api_;
  const std::size_t limit_;
  mutable std::mutex mutex_;
  std::vector<Cached> cached_;
  bool closed_ = false;
  std::uint64_t clock_ = 0;
  DeviceCacheStats stats_;
};

// The cache of device `device` with the real CUDA calls (device_memory.cpp); every call on that device
// (DeviceScope). `streams_owner` keeps alive the streams its blocks are used on (a block given back after the
// Buffer has gone is still freed in its stream's order). Throws Errc::unsupported in builds without CUDA.
std::shared_ptr<DeviceBlockCache> make_device_block_cache(int device, std::size_t limit,
                                                          std::shared_ptr<void> streams_owner);

}  // namespace ferry::detail
