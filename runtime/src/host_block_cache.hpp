// Recycled host memory for the tensors ferry returns. A dispatch returns new [M, H] tensors every call; with
// fresh allocations every call pays mmap, a page fault per 4 KiB and munmap (glibc maps blocks this large
// directly), which on the host backend cost more than moving the rows. Like a framework's caching allocator,
// freed blocks of 1 MiB and more are kept (bounded) and handed out again for requests of the same size class.
#pragma once

#include <cstddef>
#include <memory>

#include "ferry/tensor.hpp"

namespace ferry::detail {

using HostBlock = std::unique_ptr<std::byte[], HostBlockDeleter>;

// At least `bytes` bytes (>= 1), aligned to 64 bytes, contents unspecified.
HostBlock allocate_host_block(std::size_t bytes);

// `bytes` of device memory on the current CUDA device (zeroed when asked), usable on any stream when this
// returns, freed by the last reference in stream order (never a device-wide synchronisation); throws
// Errc::unsupported in builds without CUDA (device_memory.cpp).
std::shared_ptr<std::byte> allocate_device_block(std::size_t bytes, bool zero);

}  // namespace ferry::detail
