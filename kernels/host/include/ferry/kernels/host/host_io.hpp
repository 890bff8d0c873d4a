// The protocol's Io policy on the host (protocol/io.hpp): one thread per role instance, so it is its own
// group and leader; plain pointers for this node, a RemoteWriter for other nodes, std::atomic_ref for the
// counters, memcpy and vectorizable loops for the bytes, and a Traffic tally owned by the thread that steps
// the roles.
#pragma once

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstring>

#include "ferry/kernels/host/memory.hpp"
#include "ferry/kernels/host/reduce.hpp"
#include "ferry/kernels/protocol/io.hpp"
#include "ferry/kernels/protocol/numeric.hpp"
#include "ferry/kernels/protocol/step.hpp"

namespace ferry::kernels::host {

class HostIo {
 public:
  HostIo(std::byte* local, const NodeMemory* node, RemoteWriter* remote, protocol::Traffic* traffic)
      : local_(local), node_(node), remote_(remote), traffic_(traffic) {}

  std::byte* local() const { return local_; }
  std::byte* node_peer(int local_rank) const { return node_->base(local_rank); }
  static bool leader() { return true; }
  static void sync() {}

  static std::uint64_t load_acquire(const std::uint64_t* word, protocol::Reach) {
    return std::atomic_ref<std::uint64_t>(*const_cast<std::uint64_t*>(word)).load(std::memory_order_acquire);
  }
  static std::uint64_t load_private(const std::uint64_t* word) {
    return std::atomic_ref<std::uint64_t>(*const_cast<std::uint64_t*>(word)).load(std::memory_order_relaxed);
  }
  static void store_release(std::uint64_t* word, std::uint64_t value, protocol::Reach) {
    std::atomic_ref<std::uint64_t>(*word).store(value, std::memory_order_release);
  }
  static void store_private(std::uint64_t* word, std::uint64_t value) {
    std::atomic_ref<std::uint64_t>(*word).store(value, std::memory_order_relaxed);
  }
  template <class T>
  static void store(T* dst, T value) {
    *dst = value;
  }
  template <class T>
  static void commit(T* dst, const T& value) {
    *dst = value;
  }
  static void copy(void* dst, const void* src, std::size_t bytes) { std::memcpy(dst, src, bytes); }
  static void reduce(const protocol::ReduceRows& job) { host::reduce_rows(job); }

  void put(int rank, std::size_t src_offset, std::size_t dst_offset, std::size_t bytes) {
    remote_->put(rank, src_offset, dst_offset, bytes);
  }
  void signal(int rank, std::size_t word_offset, std::uint64_t add) {
    remote_->signal(rank, word_offset, add);
  }
  protocol::Traffic& traffic() { return *traffic_; }
  void set_traffic(protocol::Traffic* traffic) { traffic_ = traffic; }
  RemoteWriter* remote() const { return remote_; }

 private:
  std::byte* local_;
  const NodeMemory* node_;
  RemoteWriter* remote_;
  protocol::Traffic* traffic_;
};

}  // namespace ferry::kernels::host
