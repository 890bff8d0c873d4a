// A Fabric for proxy tests: records every operation the proxy hands it, and can be told to complete
// operations only as it progresses, to block inside an operation until released, or to throw after k
// operations.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <mutex>
#include <string>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"
#include "ferry/transport/command_ring.hpp"
#include "ferry/transport/fabric.hpp"

namespace ferry::test {

struct RecordedOp {
  transport::CommandOp op;
  int peer;
  std::uint32_t region;
  std::size_t local_offset;
  std::size_t remote_offset;
  std::size_t bytes;
  std::size_t signal_offset;
  std::uint64_t signal_add;
  bool operator==(const RecordedOp&) const = default;
};

inline RecordedOp expected_op(const transport::Command& c) {
  using transport::CommandOp;
  switch (c.op) {
    case CommandOp::put:
      return {c.op, c.peer, c.region, c.local_offset, c.remote_offset, c.bytes, 0, 0};
    case CommandOp::put_signal:
      return {c.op,    c.peer,          c.region,    c.local_offset, c.remote_offset,
              c.bytes, c.signal_offset, c.signal_add};
    case CommandOp::atomic_add:
      return {c.op, c.peer, c.region, 0, 0, 0, c.signal_offset, c.signal_add};
    default:
      return {c.op, 0, 0, 0, 0, 0, 0, 0};
  }
}

struct ScriptedFabricOptions {
  // Complete operations at once (false: one operation completes per progress() call).
  bool complete_at_once = true;
  // Throw Errc::peer_failure from the operation after this many (0: never).
  std::uint64_t fail_after = 0;
  // Never complete anything (progress() and flush() do nothing).
  bool never_complete = false;
  // Block inside the first operation until release() is called.
  bool block_first = false;
  // From the operation after this many (0: never), report `isolated_peer` as failed (as a fabric with
  // isolate_peer_failures does) and go on.
  std::uint64_t isolate_after = 0;
  int isolated_peer = 0;
};

// Everything the test inspects is either atomic or read after the proxy published a completion (which orders
// it after the proxy thread's writes).
class ScriptedFabric final : public transport::Fabric {
 public:
  explicit ScriptedFabric(ScriptedFabricOptions options = {}) : options_(options) {}

  transport::FabricKind kind() const override { return transport::FabricKind::noop; }
  std::string description() const override { return "scripted test fabric"; }
  transport::RegionId register_region(void*, std::size_t, transport::MemoryKind) override { return 0; }
  void connect() override {}

  std::uint64_t put(int peer, transport::RegionId local, std::size_t local_offset, transport::RegionId remote,
                    std::size_t remote_offset, std::size_t bytes) override {
    if (local != remote) fail(Errc::internal, "put: local and remote regions differ");
    return issue({transport::CommandOp::put, peer, remote, local_offset, remote_offset, bytes, 0, 0});
  }
  std::uint64_t put_signal(int peer, transport::RegionId local, std::size_t local_offset,
                           transport::RegionId remote, std::size_t remote_offset, std::size_t bytes,
                           transport::RegionId signal_region, std::size_t signal_offset,
                           std::uint64_t signal_add) override {
    if (local != remote || signal_region != remote) fail(Errc::internal, "put_signal: regions differ");
    return issue({transport::CommandOp::put_signal, peer, remote, local_offset, remote_offset, bytes,
                  signal_offset, signal_add});
  }
  std::uint64_t atomic_add(int peer, transport::RegionId region, std::size_t offset,
                           std::uint64_t add) override {
    return issue({transport::CommandOp::atomic_add, peer, region, 0, 0, 0, offset, add});
  }
  std::uint64_t fetch_add(int, transport::RegionId, std::size_t, std::uint64_t) override { return 0; }

  std::uint64_t completed() const override { return completed_.load(std::memory_order_acquire); }
  bool progress() override {
    progress_calls_.fetch_add(1, std::memory_order_relaxed);
    std::uint64_t done = completed_.load(std::memory_order_relaxed);
    if (options_.complete_at_once || options_.never_complete || done == issued_) return false;
    completed_.store(done + 1, std::memory_order_release);
    return true;
  }
  void flush() override {
    flushes_.fetch_add(1, std::memory_order_relaxed);
    if (!options_.never_complete) completed_.store(issued_, std::memory_order_release);
  }
  void* region_base(transport::RegionId) const override { return nullptr; }
  std::size_t region_bytes(transport::RegionId) const override { return 0; }
  std::size_t failed_peer_count() const override { return isolated_ ? 1 : 0; }  // proxy thread only
  std::vector<transport::FailedPeer> failed_peers() const override {
    if (!isolated_) return {};
    return {{options_.isolated_peer,
             "injected isolation after " + std::to_string(options_.isolate_after) + " operations"}};
  }

  void release() { released_.store(true, std::memory_order_release); }
  std::uint64_t max_outstanding() const { return max_outstanding_.load(std::memory_order_acquire); }
  std::uint64_t flushes() const { return flushes_.load(std::memory_order_acquire); }
  std::uint64_t progress_calls() const { return progress_calls_.load(std::memory_order_relaxed); }
  std::uint64_t issued() const { return issued_count_.load(std::memory_order_acquire); }
  // Safe once the proxy has completed (or stopped after) the operations of interest.
  std::vector<RecordedOp> ops() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return ops_;
  }

 private:
  std::uint64_t issue(const RecordedOp& op) {
    if (options_.fail_after != 0 && issued_ >= options_.fail_after) {
      fail(Errc::peer_failure,
           "injected failure after " + std::to_string(options_.fail_after) + " operations");
    }
    if (options_.isolate_after != 0 && issued_ >= options_.isolate_after) isolated_ = true;
    if (options_.block_first && issued_ == 0) {
      Deadline deadline(std::chrono::seconds(30));
      Backoff backoff;
      while (!released_.load(std::memory_order_acquire) && !deadline.expired()) backoff.pause();
    }
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ops_.push_back(op);
    }
    ++issued_;
    issued_count_.store(issued_, std::memory_order_release);
    std::uint64_t done = completed_.load(std::memory_order_relaxed);
    if (options_.complete_at_once && !options_.never_complete) {
      completed_.store(issued_, std::memory_order_release);
      done = issued_;
    }
    std::uint64_t outstanding = issued_ - done;
    if (outstanding > max_outstanding_.load(std::memory_order_relaxed)) {
      max_outstanding_.store(outstanding, std::memory_order_release);
    }
    return issued_;
  }

  ScriptedFabricOptions options_;
  std::uint64_t issued_ = 0;  // proxy thread only
  bool isolated_ = false;     // proxy thread only
  std::atomic<std::uint64_t> issued_count_{0};
  std::atomic<std::uint64_t> completed_{0};
  std::atomic<std::uint64_t> max_outstanding_{0};
  std::atomic<std::uint64_t> flushes_{0};
  std::atomic<std::uint64_t> progress_calls_{0};
  std::atomic<bool> released_{false};
  mutable std::mutex mutex_;
  std::vector<RecordedOp> ops_;
};

}  // namespace ferry::test
