#include "fabric/device_copy_fabric.hpp"

#include <cstdio>

#include "fabric/fabric_common.hpp"
#include "ferry/core/deadline.hpp"
#include "ferry/transport/cuda_check.hpp"

namespace ferry::transport {

namespace {

std::string address_text(const void* pointer) {
  char text[32];
  std::snprintf(text, sizeof(text), "%p", pointer);
  return text;
}

const char* memory_type_name(cudaMemoryType type) {
  switch (type) {
    case cudaMemoryTypeUnregistered:
      return "ordinary host memory";
    case cudaMemoryTypeHost:
      return "pinned host memory";
    case cudaMemoryTypeDevice:
      return "device memory";
    case cudaMemoryTypeManaged:
      return "managed memory";
  }
  return "memory of an unknown kind";
}

}  // namespace

DeviceCopyFabric::DeviceCopyFabric(std::shared_ptr<detail::DeviceCopyShared> shared, int rank)
    : shared_(std::move(shared)),
      rank_(rank),
      device_(shared_->device),
      staging_reader_(kStagingSlots, 0),
      peers_(static_cast<std::size_t>(shared_->num_ranks())) {
  detail::DeviceScope scope(device_);
  const std::string who = "device_copy fabric of rank " + std::to_string(rank_) + ": ";
  // Non-blocking: the copies must not wait for (or hold up) work on the legacy default stream.
  detail::check_cuda(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking),
                     who + "cudaStreamCreateWithFlags");
  void* staging = nullptr;
  cudaError_t status = cudaHostAlloc(&staging, kStagingSlots * sizeof(std::uint64_t), cudaHostAllocDefault);
  if (status != cudaSuccess) {
    cudaStreamDestroy(stream_);
    detail::check_cuda(status, who + "cudaHostAlloc of the signal staging words");
  }
  staging_ = static_cast<std::uint64_t*>(staging);
}

DeviceCopyFabric::~DeviceCopyFabric() {
  shared_->leave(rank_);
  int previous = -1;
  if (cudaGetDevice(&previous) != cudaSuccess) previous = -1;
  cudaSetDevice(device_);
  // Let copies that read or write our memory finish (bounded), so nothing lands in freed memory.
  if (!broken_) {
    try {
      wait_idle("destroying the fabric");
    } catch (const Error&) {
      // Reported to whoever calls next; a destructor only cleans up.
    }
  }
  for (auto& entry : events_) cudaEventDestroy(entry.second);
  for (cudaEvent_t event : spare_events_) cudaEventDestroy(event);
  if (stream_ != nullptr) cudaStreamDestroy(stream_);
  if (staging_ != nullptr) cudaFreeHost(staging_);
  for (void* memory : owned_) cudaFree(memory);
  if (previous >= 0) cudaSetDevice(previous);
}

std::string DeviceCopyFabric::description() const {
  return "device_copy (virtual rank " + std::to_string(rank_) + " of " +
         std::to_string(shared_->num_ranks()) + " on GPU " + std::to_string(device_) +
         "; cudaMemcpyAsync device-to-device, host-kept signal words)";
}

void DeviceCopyFabric::check_usable() const {
  if (broken_) throw Error::detached_copy(*broken_);
}

void DeviceCopyFabric::check_connected(const char* op) const {
  check_usable();
  if (!connected_) {
    fail(Errc::invalid_argument, std::string("device_copy fabric of rank ") + std::to_string(rank_) + ": " +
                                     op + " before connect()");
  }
}

void DeviceCopyFabric::break_with(Errc code, const std::string& message) {
  broken_.emplace(code, message);
  throw Error::detached_copy(*broken_);
}

void DeviceCopyFabric::check(cudaError_t status, const std::string& what) {
  if (status == cudaSuccess) return;
  detail::forget_last_error();
  break_with(Errc::system, "device_copy fabric of rank " + std::to_string(rank_) + ": " + what + ": " +
                               detail::describe_cuda(status));
}

RegionId DeviceCopyFabric::register_region(void* base, std::size_t bytes, MemoryKind kind) {
  check_usable();
  const std::string who = "device_copy fabric of rank " + std::to_string(rank_) + ": register_region: ";
  if (connected_) fail(Errc::invalid_argument, who + "called after connect()");
  if (bytes == 0) fail(Errc::invalid_argument, who + "0 bytes");
  if (kind != MemoryKind::cuda) {
    fail(Errc::unsupported, who + "host memory asked for; this fabric joins regions in device memory only");
  }
  detail::DeviceScope scope(device_);
  if (base == nullptr) {
    detail::check_cuda(cudaMalloc(&base, bytes), who + "cudaMalloc(" + std::to_string(bytes) +
                                                     " bytes) on device " + std::to_string(device_));
    owned_.push_back(base);
    check(cudaMemsetAsync(base, 0, bytes, stream_), "cudaMemsetAsync of a new region");
    wait_idle("zero-filling a new region");
  } else {
    cudaPointerAttributes attributes{};
    cudaError_t status = cudaPointerGetAttributes(&attributes, base);
    if (status != cudaSuccess) {
      cudaGetLastError();  // an unknown pointer is the caller's mistake, not a broken context
      fail(Errc::invalid_argument,
           who + "cudaPointerGetAttributes(" + address_text(base) + "): " + detail::describe_cuda(status));
    }
    if (attributes.type != cudaMemoryTypeDevice || attributes.device != device_) {
      fail(Errc::invalid_argument,
           who + "base " + address_text(base) + " is " + memory_type_name(attributes.type) +
               (attributes.type == cudaMemoryTypeDevice ? " of GPU " + std::to_string(attributes.device)
                                                        : "") +
               ", not device memory of GPU " + std::to_string(device_));
    }
    if (reinterpret_cast<std::uintptr_t>(base) % 8 != 0) {
      fail(Errc::invalid_argument,
           who + "base " + address_text(base) + " is not 8-byte aligned (signal words need it)");
    }
  }
  regions_.push_back({base, bytes});
  shared_->add_region(rank_, regions_.back());
  return static_cast<RegionId>(regions_.size() - 1);
}

void DeviceCopyFabric::connect() {
  check_usable();
  if (connected_) {
    fail(Errc::invalid_argument,
         "device_copy fabric of rank " + std::to_string(rank_) + ": connect() called twice");
  }
  shared_->connect(rank_);
  connected_ = true;
}

const detail::DeviceRegion& DeviceCopyFabric::local_region(const char* op, RegionId region,
                                                           std::size_t offset, std::size_t bytes) const {
  if (region >= regions_.size()) {
    fail(Errc::invalid_argument, std::string(op) + ": rank " + std::to_string(rank_) +
                                     " has no local region " + std::to_string(region));
  }
  detail::check_range(op, "local", rank_, region, offset, bytes, regions_[region].bytes);
  return regions_[region];
}

char* DeviceCopyFabric::remote_address(const char* op, int peer, RegionId region, std::size_t offset,
                                       std::size_t bytes) {
  if (peer < 0 || peer >= shared_->num_ranks() || !peers_[static_cast<std::size_t>(peer)]) {
    // First contact (connected_regions also refuses a rank outside the world, by name). A peer's regions are
    // frozen once it has connected, so the copy stays valid.
    auto regions = shared_->connected_regions(peer, op, rank_);
    peers_[static_cast<std::size_t>(peer)] = std::move(regions);
  }
  const auto& regions = *peers_[static_cast<std::size_t>(peer)];
  if (region >= regions.size()) {
    fail(Errc::invalid_argument,
         std::string(op) + ": rank " + std::to_string(peer) + " has no region " + std::to_string(region));
  }
  detail::check_range(op, "remote", peer, region, offset, bytes, regions[region].bytes);
  return static_cast<char*>(regions[region].base) + offset;
}

std::uint64_t* DeviceCopyFabric::take_staging_slot(std::uint64_t reader_ticket) {
  const std::size_t slot = next_staging_ % kStagingSlots;
  // Slots are taken in ticket order, so the oldest one is the next to free up.
  if (staging_reader_[slot] > completed_)
    wait_until_completed(staging_reader_[slot], "a free signal staging word");
  ++next_staging_;
  staging_reader_[slot] = reader_ticket;
  return staging_ + slot;
}

std::uint64_t DeviceCopyFabric::read_device_word(const std::uint64_t* word, const char* op) {
  std::uint64_t* slot = take_staging_slot(issued_);
  check(cudaMemcpyAsync(slot, word, sizeof(std::uint64_t), cudaMemcpyDeviceToHost, stream_),
        std::string(op) + ": cudaMemcpyAsync reading a signal word's first value");
  wait_idle("reading a signal word's first value");
  return *slot;
}

DeviceCopyFabric::SignalWord DeviceCopyFabric::signal_word(const char* op, int peer, RegionId region,
                                                           std::size_t offset) {
  char* address = remote_address(op, peer, region, offset, sizeof(std::uint64_t));
  detail::check_atomic_offset(op, peer, region, offset);
  auto key = std::make_tuple(peer, region, offset);
  auto found = signal_values_.find(key);
  if (found == signal_values_.end()) {
    shared_->claim_signal_word(rank_, peer, region, offset, op);
    auto* word = reinterpret_cast<std::uint64_t*>(address);
    found = signal_values_.emplace(key, read_device_word(word, op)).first;
  }
  return {reinterpret_cast<std::uint64_t*>(address), &found->second};
}

std::uint64_t DeviceCopyFabric::enqueue_signal(const char* op, const SignalWord& word, std::uint64_t add,
                                               std::uint64_t reader_ticket) {
  const std::uint64_t old_value = *word.value;
  *word.value = old_value + add;
  // The copy reads the staging word when the stream reaches it, so the word stays untouched until
  // `reader_ticket` has completed.
  std::uint64_t* slot = take_staging_slot(reader_ticket);
  *slot = *word.value;
  check(cudaMemcpyAsync(word.address, slot, sizeof(std::uint64_t), cudaMemcpyHostToDevice, stream_),
        std::string(op) + ": cudaMemcpyAsync of the signal word");
  return old_value;
}

std::uint64_t DeviceCopyFabric::put(int peer, RegionId local, std::size_t local_offset, RegionId remote,
                                    std::size_t remote_offset, std::size_t bytes) {
  check_connected("put");
  detail::DeviceScope scope(device_);
  char* target = remote_address("put", peer, remote, remote_offset, bytes);
  const auto& source = local_region("put", local, local_offset, bytes);
  if (bytes > 0) {
    check(cudaMemcpyAsync(target, static_cast<const char*>(source.base) + local_offset, bytes,
                          cudaMemcpyDeviceToDevice, stream_),
          "put: cudaMemcpyAsync of " + std::to_string(bytes) + " bytes to rank " + std::to_string(peer));
  }
  return ++issued_;
}

std::uint64_t DeviceCopyFabric::put_signal(int peer, RegionId local, std::size_t local_offset,
                                           RegionId remote, std::size_t remote_offset, std::size_t bytes,
                                           RegionId signal_region, std::size_t signal_offset,
                                           std::uint64_t signal_add) {
  check_connected("put_signal");
  detail::DeviceScope scope(device_);
  char* target = remote_address("put_signal", peer, remote, remote_offset, bytes);
  const auto& source = local_region("put_signal", local, local_offset, bytes);
  // Every check (and the signal word's first read) before anything is enqueued: a refused operation leaves
  // nothing behind.
  const SignalWord word = signal_word("put_signal", peer, signal_region, signal_offset);
  if (bytes > 0) {
    check(
        cudaMemcpyAsync(target, static_cast<const char*>(source.base) + local_offset, bytes,
                        cudaMemcpyDeviceToDevice, stream_),
        "put_signal: cudaMemcpyAsync of " + std::to_string(bytes) + " bytes to rank " + std::to_string(peer));
  }
  // Same stream, so the signal's copy starts only after the payload's has finished.
  enqueue_signal("put_signal", word, signal_add, issued_ + 1);
  return ++issued_;
}

std::uint64_t DeviceCopyFabric::atomic_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) {
  check_connected("atomic_add");
  detail::DeviceScope scope(device_);
  enqueue_signal("atomic_add", signal_word("atomic_add", peer, region, offset), add, issued_ + 1);
  return ++issued_;
}

std::uint64_t DeviceCopyFabric::fetch_add(int peer, RegionId region, std::size_t offset, std::uint64_t add) {
  check_connected("fetch_add");
  detail::DeviceScope scope(device_);
  // No ticket of its own: it waits below until the stream is idle, so the tickets issued so far cover it.
  const std::uint64_t old_value =
      enqueue_signal("fetch_add", signal_word("fetch_add", peer, region, offset), add, issued_);
  wait_idle("fetch_add");
  return old_value;
}

void DeviceCopyFabric::record_pending() {
  if (recorded_ == issued_) return;
  cudaEvent_t event = nullptr;
  if (spare_events_.empty()) {
    check(cudaEventCreateWithFlags(&event, cudaEventDisableTiming), "cudaEventCreateWithFlags");
  } else {
    event = spare_events_.back();
    spare_events_.pop_back();
  }
  cudaError_t status = cudaEventRecord(event, stream_);
  if (status != cudaSuccess) {
    spare_events_.push_back(event);
    check(status, "cudaEventRecord");
  }
  events_.emplace_back(issued_, event);
  recorded_ = issued_;
}

bool DeviceCopyFabric::progress() {
  check_usable();
  if (events_.empty() && recorded_ == issued_) return false;
  detail::DeviceScope scope(device_);
  record_pending();
  bool moved = false;
  while (!events_.empty()) {
    cudaError_t status = cudaEventQuery(events_.front().second);
    if (status == cudaErrorNotReady) break;
    check(status, "cudaEventQuery");
    completed_ = events_.front().first;
    spare_events_.push_back(events_.front().second);
    events_.pop_front();
    moved = true;
  }
  return moved;
}

void DeviceCopyFabric::wait_until_completed(std::uint64_t ticket, const char* what) {
  Deadline deadline(shared_->timeout);
  Backoff backoff;
  while (completed_ < ticket) {
    if (progress()) {
      backoff.reset();
      continue;
    }
    if (deadline.expired()) {
      break_with(Errc::timeout, "device_copy fabric of rank " + std::to_string(rank_) + ": waiting for " +
                                    what + " timed out: operation " + std::to_string(ticket) + " not done (" +
                                    std::to_string(completed_) + " of " + std::to_string(issued_) +
                                    " completed) on the copy stream");
    }
    backoff.pause();
  }
}

void DeviceCopyFabric::wait_idle(const char* what) {
  Deadline deadline(shared_->timeout);
  Backoff backoff;
  for (;;) {
    cudaError_t status = cudaStreamQuery(stream_);
    if (status == cudaSuccess) break;
    if (status != cudaErrorNotReady) check(status, std::string("cudaStreamQuery while ") + what);
    if (deadline.expired()) {
      break_with(Errc::timeout, "device_copy fabric of rank " + std::to_string(rank_) + ": " + what +
                                    " timed out: the copy stream is still busy (" +
                                    std::to_string(completed_) + " of " + std::to_string(issued_) +
                                    " operations known complete)");
    }
    backoff.pause();
  }
  // The stream is idle: everything enqueued so far is done.
  completed_ = issued_;
  recorded_ = issued_;
  for (auto& entry : events_) spare_events_.push_back(entry.second);
  events_.clear();
}

void DeviceCopyFabric::flush() {
  check_connected("flush");
  detail::DeviceScope scope(device_);
  wait_idle("flush");
}

void* DeviceCopyFabric::region_base(RegionId region) const {
  if (region >= regions_.size()) {
    fail(Errc::invalid_argument,
         "device_copy fabric of rank " + std::to_string(rank_) + ": no region " + std::to_string(region));
  }
  return regions_[region].base;
}

std::size_t DeviceCopyFabric::region_bytes(RegionId region) const {
  if (region >= regions_.size()) {
    fail(Errc::invalid_argument,
         "device_copy fabric of rank " + std::to_string(rank_) + ": no region " + std::to_string(region));
  }
  return regions_[region].bytes;
}

}  // namespace ferry::transport
