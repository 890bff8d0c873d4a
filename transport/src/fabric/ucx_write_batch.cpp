#include "fabric/ucx_write_batch.hpp"

#include <atomic>
#include <cstring>

namespace ferry::transport::write_batch {
namespace {

// Whether [offset, offset + bytes) lies in a region of `size` bytes, without overflow.
bool fits(std::uint64_t offset, std::uint64_t bytes, std::size_t size) {
  return offset <= size && bytes <= size - offset;
}

std::string entry_text(std::uint32_t index, const BatchEntry& entry) {
  return "entry " + std::to_string(index) + " (region " + std::to_string(entry.region) + ", offset " +
         std::to_string(entry.offset) + ")";
}

// Entry `index` of the table at `table` (copied out: the message may sit at any alignment).
BatchEntry entry_at(const std::byte* table, std::uint32_t index) {
  BatchEntry entry;
  std::memcpy(&entry, table + std::size_t{index} * sizeof entry, sizeof entry);
  return entry;
}

// "" when every entry fits the regions and the payload adds up, else the first problem.
std::string check(const BatchHeader& header, const std::byte* table, std::size_t payload_length,
                  std::span<const TargetRegion> regions) {
  std::uint64_t payload = 0;
  for (std::uint32_t i = 0; i < header.entries; ++i) {
    const BatchEntry entry = entry_at(table, i);
    if (entry.region >= regions.size()) {
      return entry_text(i, entry) + " names a region this rank does not have (it has " +
             std::to_string(regions.size()) + ")";
    }
    if (!regions[entry.region].host) {
      return entry_text(i, entry) +
             " names a region of device memory on this rank (batches write host memory)";
    }
    const std::size_t size = regions[entry.region].bytes;
    if (entry.kind == static_cast<std::uint32_t>(EntryKind::put)) {
      if (!fits(entry.offset, entry.value, size)) {
        return entry_text(i, entry) + " writes " + std::to_string(entry.value) +
               " bytes past the region's end (" + std::to_string(size) + " bytes)";
      }
      if (entry.value > payload_length - payload) {
        return entry_text(i, entry) + " needs more payload than the message carries";
      }
      payload += entry.value;
    } else if (entry.kind == static_cast<std::uint32_t>(EntryKind::add)) {
      const auto address = reinterpret_cast<std::uintptr_t>(regions[entry.region].base) + entry.offset;
      if (address % 8 != 0 || !fits(entry.offset, 8, size)) {
        return entry_text(i, entry) + " is not an aligned 64-bit word of the region (" +
               std::to_string(size) + " bytes)";
      }
    } else {
      return entry_text(i, entry) + " has unknown kind " + std::to_string(entry.kind);
    }
  }
  if (payload != header.payload_bytes || payload != payload_length) {
    return "its entries carry " + std::to_string(payload) + " payload bytes, its header says " +
           std::to_string(header.payload_bytes) + " and the message holds " + std::to_string(payload_length);
  }
  return "";
}

}  // namespace

std::string apply(const std::byte* message, std::size_t length, std::span<const TargetRegion> regions,
                  int world_size) {
  BatchHeader header;
  if (length < sizeof header) {
    return "a write batch of " + std::to_string(length) + " bytes is shorter than its header";
  }
  std::memcpy(&header, message, sizeof header);
  if (header.magic != kMagic) return "a message with this fabric's write-batch id is not a write batch";
  auto from = [&] { return "the write batch from rank " + std::to_string(header.sender); };
  if (header.sender >= static_cast<std::uint32_t>(world_size)) {
    return "a write batch names sender " + std::to_string(header.sender) + " in a world of " +
           std::to_string(world_size);
  }
  const std::size_t table_room = (length - sizeof header) / sizeof(BatchEntry);
  if (header.entries > table_room) {
    return from() + " announces " + std::to_string(header.entries) + " entries but holds room for " +
           std::to_string(table_room);
  }
  const std::byte* table = message + sizeof header;
  const std::byte* payload = table + std::size_t{header.entries} * sizeof(BatchEntry);
  const std::size_t payload_length =
      length - sizeof header - std::size_t{header.entries} * sizeof(BatchEntry);
  if (std::string problem = check(header, table, payload_length, regions); !problem.empty())
    return from() + ": " + problem;

  for (std::uint32_t i = 0; i < header.entries; ++i) {
    const BatchEntry entry = entry_at(table, i);
    std::byte* target = regions[entry.region].base + entry.offset;
    if (entry.kind == static_cast<std::uint32_t>(EntryKind::put)) {
      std::memcpy(target, payload, entry.value);
      payload += entry.value;
    } else {
      // Release: whoever sees the new count also sees the puts written before it.
      std::atomic_ref<std::uint64_t>(*reinterpret_cast<std::uint64_t*>(target))
          .fetch_add(entry.value, std::memory_order_release);
    }
  }
  return "";
}

}  // namespace ferry::transport::write_batch
