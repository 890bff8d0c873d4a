// Memory-ordering policies for the protocol's counters.
//
// Roles never touch a counter directly: they call a policy with load_acquire / store_release / load_relaxed /
// store_relaxed / fence, so one role template runs on the host (std::atomic_ref, this file) and on the device
// (ld.acquire.sys / st.release.sys, in the CUDA backend). A payload written before a store_release of the tail is
// visible to a consumer whose load_acquire of that tail saw the new value.
#pragma once

#include <atomic>
#include <cstdint>

namespace ferry::kernels::protocol {

struct HostAtomics {
  static std::uint64_t load_acquire(const std::uint64_t* word) {
    return std::atomic_ref<std::uint64_t>(*const_cast<std::uint64_t*>(word)).load(std::memory_order_acquire);
  }
  static std::uint64_t load_relaxed(const std::uint64_t* word) {
    return std::atomic_ref<std::uint64_t>(*const_cast<std::uint64_t*>(word)).load(std::memory_order_relaxed);
  }
  static void store_release(std::uint64_t* word, std::uint64_t value) {
    std::atomic_ref<std::uint64_t>(*word).store(value, std::memory_order_release);
  }
  static void store_relaxed(std::uint64_t* word, std::uint64_t value) {
    std::atomic_ref<std::uint64_t>(*word).store(value, std::memory_order_relaxed);
  }
  static void fetch_add_release(std::uint64_t* word, std::uint64_t value) {
    std::atomic_ref<std::uint64_t>(*word).fetch_add(value, std::memory_order_release);
  }
  static void fence() { std::atomic_thread_fence(std::memory_order_seq_cst); }
};

}  // namespace ferry::kernels::protocol
