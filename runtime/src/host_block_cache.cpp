#include "host_block_cache.hpp"

#include <sys/mman.h>

#include <bit>
#include <map>
#include <mutex>
#include <new>
#include <vector>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23  // Linux 5.14; older kernels refuse it (EINVAL) and nothing changes
#endif

namespace ferry::detail {
namespace {

constexpr std::size_t kAlignment = 64;
constexpr std::size_t kSmallestCached = std::size_t{1} << 20;
constexpr std::size_t kHugePage = std::size_t{2} << 20;
constexpr std::size_t kPage = 4096;

// Cached blocks start on a page (madvise needs one), those of a huge page or more on a huge-page boundary, so
// that the kernel can back them with transparent huge pages.
std::size_t alignment_of(std::size_t capacity) {
  return capacity >= kHugePage ? kHugePage : kPage;
}

// A block the cache has not held before is fresh memory: the first write to each 4 KiB page faults, and on a
// VM whose hypervisor backs memory on demand that made the first operation whose outputs did not fit the
// cache several times slower than the next ones (docs/perf/probes.md). Ask for huge pages (one fault per
// 2 MiB where transparent huge pages are on "madvise", as Debian's default is) and fault in the `bytes` the
// caller will write at once, here, rather than page by page inside the copies that fill the block. Both are
// advice: where the kernel refuses, the memory faults in on first use as before.
void prefault(std::byte* block, std::size_t capacity, std::size_t bytes) {
  if (capacity >= kHugePage) ::madvise(block, capacity, MADV_HUGEPAGE);
  const std::size_t length = (bytes + kPage - 1) / kPage * kPage;
  ::madvise(block, std::min(length, capacity), MADV_POPULATE_WRITE);
}
// Blocks kept for reuse, in bytes, over all size classes: enough for a few operations' outputs of a large
// layer (4096 x 8 x 7168 bf16 is 470 MB) without holding on to memory a program has stopped needing.
constexpr std::size_t kCacheLimit = std::size_t{2} << 30;

// Size classes: powers of two and the midpoints between them, so a block wastes at most a third.
std::size_t size_class(std::size_t bytes) {
  std::size_t power = std::bit_ceil(bytes);
  std::size_t three_quarters = power / 4 * 3;
  return bytes <= three_quarters && three_quarters >= kSmallestCached ? three_quarters : power;
}

class BlockCache {
 public:
  static BlockCache& instance() {
    static BlockCache* cache = new BlockCache;  // never destroyed: tensors may outlive static destruction
    return *cache;
  }

  std::byte* take(std::size_t capacity) {
    std::lock_guard lock(mutex_);
    auto it = free_.find(capacity);
    if (it == free_.end() || it->second.empty()) return nullptr;
    std::byte* block = it->second.back();
    it->second.pop_back();
    cached_bytes_ -= capacity;
    return block;
  }

  // Keeps the block when there is room, else frees it.
  void give_back(std::byte* block, std::size_t capacity) {
    {
      std::lock_guard lock(mutex_);
      if (cached_bytes_ + capacity <= kCacheLimit) {
        free_[capacity].push_back(block);
        cached_bytes_ += capacity;
        return;
      }
    }
    ::operator delete[](block, std::align_val_t{alignment_of(capacity)});
  }

 private:
  std::mutex mutex_;
  std::map<std::size_t, std::vector<std::byte*>> free_;
  std::size_t cached_bytes_ = 0;
};

}  // namespace

void HostBlockDeleter::operator()(std::byte* block) const {
  if (block == nullptr) return;
  if (capacity == 0) {
    ::operator delete[](block, std::align_val_t{kAlignment});
    return;
  }
  BlockCache::instance().give_back(block, capacity);
}

HostBlock allocate_host_block(std::size_t bytes) {
  if (bytes == 0) bytes = 1;
  if (bytes < kSmallestCached) {
    auto* block = static_cast<std::byte*>(::operator new[](bytes, std::align_val_t{kAlignment}));
    return HostBlock(block, HostBlockDeleter{0});
  }
  std::size_t capacity = size_class(bytes);
  std::byte* block = BlockCache::instance().take(capacity);
  if (block == nullptr) {
    block = static_cast<std::byte*>(::operator new[](capacity, std::align_val_t{alignment_of(capacity)}));
    prefault(block, capacity, bytes);
  }
  return HostBlock(block, HostBlockDeleter{capacity});
}

}  // namespace ferry::detail
