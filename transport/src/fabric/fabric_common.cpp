#include "fabric/fabric_common.hpp"

#include <dirent.h>

#include <cstring>
#include <fstream>
#include <memory>

#include "ferry/core/error.hpp"

namespace ferry::transport::detail {

std::uint64_t TicketLedger::issue() {
  done_.push_back(false);
  return next_++;
}

void TicketLedger::finish(std::uint64_t ticket) {
  if (ticket <= completed_ || ticket >= next_) {
    fail(Errc::internal, "fabric ticket " + std::to_string(ticket) +
                             " finished twice or never issued (completed " + std::to_string(completed_) +
                             ", next " + std::to_string(next_) + ")");
  }
  done_[ticket - completed_ - 1] = true;
  while (!done_.empty() && done_.front()) {
    done_.pop_front();
    ++completed_;
  }
}

void check_peer(const Peers& peers, int peer, const char* op) {
  if (peer < 0 || peer >= peers.world_size) {
    fail(Errc::invalid_argument, std::string(op) + ": peer rank " + std::to_string(peer) +
                                     " is outside the world of " + std::to_string(peers.world_size) +
                                     " ranks");
  }
}

void check_range(const char* op, const char* side, int owner_rank, RegionId region, std::size_t offset,
                 std::size_t bytes, std::size_t region_bytes) {
  if (offset > region_bytes || bytes > region_bytes - offset) {
    fail(Errc::invalid_argument, std::string(op) + ": " + side + " range [" + std::to_string(offset) + ", +" +
                                     std::to_string(bytes) + ") exceeds region " + std::to_string(region) +
                                     " of rank " + std::to_string(owner_rank) + " (" +
                                     std::to_string(region_bytes) + " bytes)");
  }
}

void check_atomic_offset(const char* op, int peer, RegionId region, std::size_t offset) {
  if (offset % 8 != 0) {
    fail(Errc::invalid_argument, std::string(op) + ": offset " + std::to_string(offset) + " in region " +
                                     std::to_string(region) + " of rank " + std::to_string(peer) +
                                     " is not 8-byte aligned (64-bit atomics need it)");
  }
}

void BlobWriter::u32(std::uint32_t value) {
  for (int i = 0; i < 4; ++i) out_.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
}

void BlobWriter::u64(std::uint64_t value) {
  for (int i = 0; i < 8; ++i) out_.push_back(static_cast<std::uint8_t>(value >> (8 * i)));
}

void BlobWriter::bytes(const void* data, std::size_t size) {
  u32(static_cast<std::uint32_t>(size));
  const auto* p = static_cast<const std::uint8_t*>(data);
  out_.insert(out_.end(), p, p + size);
}

void BlobReader::need(std::size_t size) const {
  if (in_.size() - at_ < size) {
    fail(Errc::protocol, what_ + ": truncated (needs " + std::to_string(size) + " more bytes at offset " +
                             std::to_string(at_) + " of " + std::to_string(in_.size()) + ")");
  }
}

std::uint32_t BlobReader::u32() {
  need(4);
  std::uint32_t value = 0;
  for (int i = 0; i < 4; ++i) value |= std::uint32_t{in_[at_ + i]} << (8 * i);
  at_ += 4;
  return value;
}

std::uint64_t BlobReader::u64() {
  need(8);
  std::uint64_t value = 0;
  for (int i = 0; i < 8; ++i) value |= std::uint64_t{in_[at_ + i]} << (8 * i);
  at_ += 8;
  return value;
}

Bytes BlobReader::bytes() {
  std::uint32_t size = u32();
  need(size);
  Bytes out(in_.begin() + static_cast<std::ptrdiff_t>(at_),
            in_.begin() + static_cast<std::ptrdiff_t>(at_ + size));
  at_ += size;
  return out;
}

void BlobReader::expect_end() const {
  if (at_ != in_.size()) {
    fail(Errc::protocol, what_ + ": " + std::to_string(in_.size() - at_) + " unexpected trailing bytes");
  }
}

bool nodes_share_one_kernel(const Peers& peers) {
  if (peers.num_nodes() <= 1) return false;
  std::string boot_id;
  std::ifstream("/proc/sys/kernel/random/boot_id") >> boot_id;
  if (boot_id.empty()) boot_id = "unknown";
  auto all = peers.store->all_gather("ferry/fabric/boot_id", peers.rank, peers.world_size,
                                     Bytes(boot_id.begin(), boot_id.end()));
  for (int rank = 0; rank < peers.world_size; ++rank) {
    for (int other = rank + 1; other < peers.world_size; ++other) {
      if (rank / peers.local_size != other / peers.local_size && all[rank] == all[other]) return true;
    }
  }
  return false;
}

bool rdma_device_present() {
  std::unique_ptr<DIR, int (*)(DIR*)> dir(opendir("/sys/class/infiniband"), closedir);
  if (!dir) return false;
  while (const dirent* entry = readdir(dir.get())) {
    if (entry->d_name[0] != '.') return true;
  }
  return false;
}

}  // namespace ferry::transport::detail
