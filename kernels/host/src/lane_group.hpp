// The GPU's execution model, on the host: a role instance run by a group of threads ("lanes") at once, as a
// group of warps runs it on a GPU. Every lane runs the same role code on its own copy of the role object;
// they share the role's state arrays, which only the leader writes (commit), and every value a branch depends
// on is broadcast from the leader. Bulk work is split between the lanes. With ThreadSanitizer watching, a
// role that lets its lanes diverge or read state before it is committed fails here, on the CPU, instead of
// corrupting a GPU run nobody can debug.
#pragma once

#include <atomic>
#include <barrier>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <thread>

#include "ferry/kernels/host/low_latency_numeric.hpp"
#include "ferry/kernels/host/memory.hpp"
#include "ferry/kernels/host/reduce.hpp"
#include "ferry/kernels/protocol/io.hpp"
#include "ferry/kernels/protocol/numeric.hpp"
#include "ferry/kernels/protocol/step.hpp"

namespace ferry::kernels::host {

// What the lanes of one group share.
class LaneGroup {
 public:
  explicit LaneGroup(int lanes) : lanes_(lanes), barrier_(lanes) {}
  int lanes() const { return lanes_; }
  void sync() { barrier_.arrive_and_wait(); }
  std::uint64_t slots[2] = {0, 0};  // broadcast: written by the leader between two syncs

 private:
  int lanes_;
  std::barrier<> barrier_;
};

class LaneIo {
 public:
  LaneIo(LaneGroup& group, int lane, std::byte* local, const NodeMemory* node, RemoteWriter* remote,
         protocol::Traffic* traffic, const std::atomic<bool>* abort, PeerHealth* health = nullptr)
      : group_(group),
        lane_(lane),
        local_(local),
        node_(node),
        remote_(remote),
        traffic_(traffic),
        abort_(abort),
        health_(health) {}

  std::byte* local() const { return local_; }
  std::byte* node_peer(int local_rank) const { return node_->base(local_rank); }
  bool leader() const { return lane_ == 0; }
  void sync() { group_.sync(); }

  std::uint64_t broadcast(std::uint64_t value) {
    if (leader()) group_.slots[slot_] = value;
    sync();
    value = group_.slots[slot_];
    slot_ ^= 1;  // the next broadcast writes the other slot: every lane has read this one before that sync
    return value;
  }

  std::uint64_t load_acquire(const std::uint64_t* word, protocol::Reach) {
    std::uint64_t value = 0;
    if (leader()) {
      value =
          std::atomic_ref<std::uint64_t>(*const_cast<std::uint64_t*>(word)).load(std::memory_order_acquire);
    }
    return broadcast(value);
  }
  static std::uint64_t load_private(const std::uint64_t* word) {
    return std::atomic_ref<std::uint64_t>(*const_cast<std::uint64_t*>(word)).load(std::memory_order_relaxed);
  }
  void store_release(std::uint64_t* word, std::uint64_t value, protocol::Reach) {
    require_leader();
    std::atomic_ref<std::uint64_t>(*word).store(value, std::memory_order_release);
  }
  void store_private(std::uint64_t* word, std::uint64_t value) {
    require_leader();
    std::atomic_ref<std::uint64_t>(*word).store(value, std::memory_order_relaxed);
  }
  template <class T>
  void store(T* dst, T value) {
    if (leader()) *dst = value;
  }
  // Every lane has read the old state before the leader replaces it, and sees the new one after.
  template <class T>
  void commit(T* dst, const T& value) {
    sync();
    if (leader()) *dst = value;
    sync();
  }

  // Each lane copies its own contiguous share.
  void copy(void* dst, const void* src, std::size_t bytes) {
    const std::size_t share = (bytes + group_.lanes() - 1) / group_.lanes();
    const std::size_t begin = std::min(bytes, share * lane_);
    const std::size_t end = std::min(bytes, begin + share);
    if (end > begin)
      std::memcpy(static_cast<std::byte*>(dst) + begin, static_cast<const std::byte*>(src) + begin,
                  end - begin);
  }

  // Each lane sums its own contiguous range of elements, in the same order per element as one thread would.
  void reduce(const protocol::ReduceRows& job) {
    const std::int64_t share = (job.hidden + group_.lanes() - 1) / group_.lanes();
    const std::int64_t begin = std::min(job.hidden, share * lane_);
    const std::int64_t end = std::min(job.hidden, begin + share);
    if (end <= begin) return;
    const std::size_t offset = static_cast<std::size_t>(begin) * protocol::element_bytes(job.kind);
    const std::byte* terms[protocol::kMaxReduceRows];
    const std::byte* group[protocol::kMaxReduceRows];
    for (int t = 0; t < job.num_terms; ++t) terms[t] = job.terms[t] + offset;
    for (int g = 0; g < job.group_size; ++g) group[g] = job.group[g] + offset;
    protocol::ReduceRows part = job;
    part.hidden = end - begin;
    part.terms = terms;
    part.group = group;
    part.bias = job.bias != nullptr ? job.bias + offset : nullptr;
    part.out = job.out + offset;
    host::reduce_rows(part);
  }

  // The low-latency mode's bulk operations: each lane casts its own run of 128-value blocks, or sums its own
  // range of elements (the same bits as one thread).
  void quantize(const protocol::QuantizeRow& job) {
    const std::int64_t blocks = protocol::scale_blocks(job.hidden);
    const std::int64_t share = (blocks + group_.lanes() - 1) / group_.lanes();
    const std::int64_t first = std::min(blocks, share * lane_);
    const std::int64_t last = std::min(blocks, first + share);
    if (last <= first) return;
    protocol::QuantizeRow part = job;
    const std::int64_t begin = first * protocol::kFp8BlockSize;
    part.x = job.x + begin;
    part.hidden = std::min(job.hidden, last * protocol::kFp8BlockSize) - begin;
    part.out = job.out + begin;
    part.scales = job.scales + first;
    host::quantize_row(part);
  }
  void weighted_sum(const protocol::WeightedRows& job) {
    const std::int64_t share = (job.hidden + group_.lanes() - 1) / group_.lanes();
    const std::int64_t begin = std::min(job.hidden, share * lane_);
    const std::int64_t end = std::min(job.hidden, begin + share);
    if (end <= begin) return;
    protocol::WeightedRows part = job;
    for (int k = 0; k < job.count; ++k) part.rows[k] = job.rows[k] + begin;
    part.hidden = end - begin;
    part.out = job.out + begin;
    host::weighted_sum(part);
  }

  // Fabric posts happen on the leader only. A failure there (the proxy is gone) must not leave the other
  // lanes waiting at a barrier: it is kept, and aborted() reports it to every lane at the next stall.
  void put(int rank, std::size_t src_offset, std::size_t dst_offset, std::size_t bytes) {
    require_leader();
    guarded([&] { remote_->put(rank, src_offset, dst_offset, bytes); });
  }
  void signal(int rank, std::size_t word_offset, std::uint64_t add) {
    require_leader();
    guarded([&] { remote_->signal(rank, word_offset, add); });
  }
  protocol::Traffic& traffic() { return *traffic_; }

  std::uint64_t now() {
    std::uint64_t value = 0;
    if (leader()) {
      value = static_cast<std::uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                             std::chrono::steady_clock::now().time_since_epoch())
                                             .count());
    }
    return broadcast(value);
  }
  bool aborted() {
    std::uint64_t stop = 0;
    if (leader()) {
      if (remote_ != nullptr) guarded([&] { remote_->flush(); });
      const auto now = std::chrono::steady_clock::now();
      if (health_ != nullptr && now - last_health_ > std::chrono::milliseconds(50)) {
        last_health_ = now;
        guarded([&] { health_->check(); });
      }
      stop = failure_ || abort_->load(std::memory_order_acquire) ? 1 : 0;
    }
    return broadcast(stop) != 0;
  }
  // The host needs no heartbeat: its waits run on threads that see their own progress.
  void progressed(std::uint64_t, std::uint64_t) const {}
  static void pause(unsigned attempt) {
    if (attempt < 16) {
      std::this_thread::yield();
    } else {
      std::this_thread::sleep_for(std::chrono::microseconds(attempt < 64 ? 20 : 200));
    }
  }

  // Leader only: the first failure a post or flush met, if any.
  std::exception_ptr failure() const { return failure_; }
  RemoteWriter* remote() const { return remote_; }

 private:
  void require_leader() const {
    if (!leader()) std::terminate();  // a role wrote shared state from a non-leader lane: a protocol bug
  }
  template <class Body>
  void guarded(Body body) {
    if (failure_) return;
    try {
      body();
    } catch (...) {
      failure_ = std::current_exception();
    }
  }

  LaneGroup& group_;
  int lane_;
  int slot_ = 0;
  std::byte* local_;
  const NodeMemory* node_;
  RemoteWriter* remote_;
  protocol::Traffic* traffic_;
  const std::atomic<bool>* abort_;
  PeerHealth* health_;
  std::chrono::steady_clock::time_point last_health_{};
  std::exception_ptr failure_;
};

}  // namespace ferry::kernels::host
