#include "device_block_cache.hpp"

#include <algorithm>
#include <bit>
#include <string>

#include "ferry/core/error.hpp"

namespace ferry::detail {

std::size_t DeviceBlockCache::size_class(std::size_t bytes) {
  constexpr std::size_t kSmallest = 512;
  if (bytes <= kSmallest) return kSmallest;
  const std::size_t power = std::bit_ceil(bytes);
  const std::size_t three_quarters = power / 4 * 3;
  return bytes <= three_quarters ? three_quarters : power;
}

std::shared_ptr<DeviceBlockCache> DeviceBlockCache::create(std::unique_ptr<DeviceMemoryApi> api,
                                                           std::size_t limit) {
  return std::shared_ptr<DeviceBlockCache>(new DeviceBlockCache(std::move(api), limit));
}

DeviceBlockCache::DeviceBlockCache(std::unique_ptr<DeviceMemoryApi> api, std::size_t limit)
    : api_(std::move(api)), limit_(limit) {}

DeviceBlockCache::~DeviceBlockCache() {
  close();
}

std::shared_ptr<std::byte> DeviceBlockCache::wrap(void* block, std::size_t capacity, Stream stream) {
  // Should making the control block fail, shared_ptr gives the block back through the deleter itself.
  return std::shared_ptr<std::byte>(static_cast<std::byte*>(block),
                                    [self = shared_from_this(), capacity, stream](std::byte* memory) {
                                      self->give_back(memory, capacity, stream);
                                    });
}

void* DeviceBlockCache::take_cached(std::size_t capacity, Stream stream) {
  std::lock_guard lock(mutex_);
  if (closed_) return nullptr;
  auto pick = cached_.end();
  // The most recent block freed on this stream (reusable at once), else the oldest whose marker has passed.
  for (auto it = cached_.begin(); it != cached_.end(); ++it) {
    if (it->capacity != capacity || it->stream != stream) continue;
    if (pick == cached_.end() || it->age > pick->age) pick = it;
  }
  if (pick == cached_.end()) {
    for (auto it = cached_.begin(); it != cached_.end(); ++it) {
      if (it->capacity != capacity || it->marker == nullptr || !api_->passed(it->marker)) continue;
      if (pick == cached_.end() || it->age < pick->age) pick = it;
    }
  }
  if (pick == cached_.end()) return nullptr;
  const Cached found = *pick;
  cached_.erase(pick);
  stats_.cached_bytes -= found.capacity;
  stats_.in_use_bytes += found.capacity;
  ++stats_.reuses;
  if (found.marker != nullptr) api_->forget(found.marker);
  return found.block;
}

std::shared_ptr<std::byte> DeviceBlockCache::allocate(std::size_t bytes, Stream stream) {
  const std::size_t capacity = size_class(bytes);
  if (void* block = take_cached(capacity, stream)) return wrap(block, capacity, stream);
  void* block = api_->allocate(capacity, stream);
  std::size_t emptied = 0;
  if (block == nullptr) {  // the device is full: give back everything cached and try again
    std::vector<Cached> all;
    {
      std::lock_guard lock(mutex_);
      emptied = stats_.cached_bytes;
      all.swap(cached_);
      stats_.cached_bytes = 0;
    }
    release(all);
    block = api_->allocate(capacity, stream);
  }
  if (block == nullptr) {
    fail(Errc::system, "out of device memory: no block of " + std::to_string(capacity) + " bytes (for " +
                           std::to_string(bytes) + ") even after releasing the " + std::to_string(emptied) +
                           " cached bytes");
  }
  {
    std::lock_guard lock(mutex_);
    stats_.in_use_bytes += capacity;
    ++stats_.allocations;
  }
  return wrap(block, capacity, stream);
}

void DeviceBlockCache::give_back(void* block, std::size_t capacity, Stream stream) noexcept {
  std::vector<Cached> evicted;
  {
    // The marker is recorded under the lock: close() (before the Buffer destroys its stream) cannot slip in
    // between the check and the record.
    std::lock_guard lock(mutex_);
    stats_.in_use_bytes -= capacity;
    if (closed_) {
      evicted.push_back({block, capacity, stream, nullptr, 0});
    } else {
      cached_.push_back({block, capacity, stream, api_->mark(stream), ++clock_});
      stats_.cached_bytes += capacity;
      while (stats_.cached_bytes > limit_ && !cached_.empty()) {
        auto oldest = std::min_element(cached_.begin(), cached_.end(),
                                       [](const Cached& a, const Cached& b) { return a.age < b.age; });
        stats_.cached_bytes -= oldest->capacity;
        evicted.push_back(*oldest);
        cached_.erase(oldest);
      }
    }
  }
  release(evicted);
}

void DeviceBlockCache::release(std::vector<Cached>& blocks) noexcept {
  for (const Cached& cached : blocks) {
    if (cached.marker != nullptr) api_->forget(cached.marker);
    api_->release(cached.block, cached.stream);
  }
  std::lock_guard lock(mutex_);
  stats_.releases += blocks.size();
  blocks.clear();
}

void DeviceBlockCache::close() {
  std::vector<Cached> all;
  {
    std::lock_guard lock(mutex_);
    closed_ = true;
    all.swap(cached_);
    stats_.cached_bytes = 0;
  }
  release(all);
}

DeviceCacheStats DeviceBlockCache::stats() const {
  std::lock_guard lock(mutex_);
  return stats_;
}

}  // namespace ferry::detail
