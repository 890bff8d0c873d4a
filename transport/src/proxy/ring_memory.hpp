// Memory for command rings: pinned and mapped into the GPU's address space when CUDA can provide it, else
// ordinary page-aligned host memory. Zero-filled either way.
#pragma once

#include <cstddef>

#include "ferry/transport/proxy.hpp"

namespace ferry::transport::detail {

class RingAllocation {
 public:
  // Throws Errc::unsupported for RingMemory::cuda_mapped when CUDA cannot map host memory here (no CUDA in
  // this build, or no GPU), naming the reason; Errc::system when the host allocation fails.
  RingAllocation(std::size_t bytes, RingMemory mode);
  ~RingAllocation();
  RingAllocation(const RingAllocation&) = delete;
  RingAllocation& operator=(const RingAllocation&) = delete;

  void* host() const { return host_; }
  // The same bytes as a kernel addresses them; nullptr unless the memory is cuda-mapped.
  void* device() const { return device_; }
  std::size_t bytes() const { return bytes_; }

 private:
  void* host_ = nullptr;
  void* device_ = nullptr;
  std::size_t bytes_ = 0;
  bool cuda_ = false;
};

}  // namespace ferry::transport::detail
