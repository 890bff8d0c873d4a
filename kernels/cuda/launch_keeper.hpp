// What the launches of each operation need until that operation has run on the GPU: the device copy of its
// launch plans and the pinned staging buffer they are copied from (a cudaMemcpyAsync reads it when the stream
// gets there, which may be long after the call returned, behind earlier operations). An operation lets go
// only when its OWN completion says so; a staging buffer goes back to the pool only then, so a later launch
// never rewrites pinned memory that a queued copy has yet to read. An operation captured into a CUDA graph
// completes when the graph lets go of it (every launch of the graph reads what it holds).
//
// The staging buffers are made up front (reserve(), from the engine's constructor) and never mid-run: a
// page-locked allocation is one of the calls that keep commands of two streams from overlapping (CUDA's
// "implicit synchronization"), so with ranks sharing a GPU as threads, one rank allocating while another's
// kernel spins waiting for it would keep its own next kernel from starting until that spin timed out. When
// every buffer is held, stage() says so (nullptr) and the engine waits for an operation to complete.
//
// Plain C++ (no CUDA types): the engine (device_engine.cu) gives each operation a completion test that asks
// its CUDA event; tests/unit/test_device_bookkeeping.cpp drives it with fake completions. Thread-safe:
// operations are issued on the caller's thread and let go from whichever thread sees an Event complete.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <vector>

namespace ferry::kernels::cuda {

template <class Staging>
class LaunchKeeper {
 public:
  using Completed = std::function<bool()>;
  using Make = std::function<std::shared_ptr<Staging>(std::size_t)>;

  // Starts the next operation (ids 1, 2, ... in issue order): what keep() and stage() take now belongs to it.
  std::uint64_t begin() {
    std::lock_guard lock(mutex_);
    operations_.push_back(Operation{++last_id_, {}, {}, false});
    return last_id_;
  }

  // Held by the current operation until it has completed.
  void keep(std::shared_ptr<void> resource) {
    std::lock_guard lock(mutex_);
    current().resources.push_back(std::move(resource));
  }

  // Makes `count` more staging buffers of `size` elements, now (outside any operation).
  void reserve(std::size_t count, std::size_t size, const Make& make) {
    std::vector<StagingSlot> made;
    for (std::size_t i = 0; i < count; ++i) made.push_back(StagingSlot{make(size), size, 0});
    std::lock_guard lock(mutex_);
    for (StagingSlot& slot : made) staging_.push_back(std::move(slot));
  }

  // A reserved staging buffer of at least `size` elements that no operation still holds (the smallest that
  // fits), held by the current operation until it has completed; nullptr when none is free (never a new
  // one: see above).
  std::shared_ptr<Staging> stage(std::size_t size) {
    std::lock_guard lock(mutex_);
    StagingSlot* best = nullptr;
    for (StagingSlot& slot : staging_) {
      if (slot.holder == 0 && slot.size >= size && (best == nullptr || slot.size < best->size)) best = &slot;
    }
    if (best == nullptr) return nullptr;
    best->holder = current().id;
    return best->buffer;
  }

  // The current operation is enqueued; `completed` says whether it has run (asked until it says yes).
  void end(Completed completed) {
    std::lock_guard lock(mutex_);
    Operation& operation = current();
    operation.completed = std::move(completed);
    operation.ended = true;
  }

  // Lets go of every ended operation whose own completion says it has run. Returns how many are still held.
  std::size_t collect() {
    std::vector<Operation> finished;  // released outside the lock (a resource's destructor may call CUDA)
    std::size_t held = 0;
    {
      std::lock_guard lock(mutex_);
      std::vector<Operation> still;
      for (Operation& operation : operations_) {
        if (operation.ended && operation.completed && operation.completed()) {
          free_staging_of(operation.id);
          finished.push_back(std::move(operation));
        } else {
          still.push_back(std::move(operation));
        }
      }
      operations_ = std::move(still);
      held = operations_.size();
    }
    return held;
  }

  // The caller knows that everything issued has run (it drained the stream): lets go of every ended
  // operation.
  void release_all() {
    std::vector<Operation> finished;
    {
      std::lock_guard lock(mutex_);
      std::vector<Operation> still;
      for (Operation& operation : operations_) {
        if (operation.ended) {
          free_staging_of(operation.id);
          finished.push_back(std::move(operation));
        } else {
          still.push_back(std::move(operation));
        }
      }
      operations_ = std::move(still);
    }
  }

  std::size_t operations_held() const {
    std::lock_guard lock(mutex_);
    return operations_.size();
  }
  // Held operations that can still complete (ended with a completion test): what is worth waiting for. One
  // ended without a test is held until release_all() or the keeper goes.
  std::size_t awaiting() const {
    std::lock_guard lock(mutex_);
    std::size_t count = 0;
    for (const Operation& operation : operations_) {
      if (operation.ended && operation.completed) ++count;
    }
    return count;
  }
  std::size_t staging_buffers() const {
    std::lock_guard lock(mutex_);
    return staging_.size();
  }
  // The operation holding `buffer` (0: none), for tests.
  std::uint64_t holder_of(const Staging* buffer) const {
    std::lock_guard lock(mutex_);
    for (const StagingSlot& slot : staging_) {
      if (slot.buffer.get() == buffer) return slot.holder;
    }
    return 0;
  }

 private:
  struct Operation {
    std::uint64_t id = 0;
    std::vector<std::shared_ptr<void>> resources;
    Completed completed;
    bool ended = false;
  };
  struct StagingSlot {
    std::shared_ptr<Staging> buffer;
    std::size_t size = 0;
    std::uint64_t holder = 0;  // the operation whose copy reads it; 0: free
  };

  Operation& current() {
    if (operations_.empty() || operations_.back().ended) {
      operations_.push_back(Operation{++last_id_, {}, {}, false});  // launches outside begin(): their own
    }
    return operations_.back();
  }
  void free_staging_of(std::uint64_t id) {
    for (StagingSlot& slot : staging_) {
      if (slot.holder == id) slot.holder = 0;
    }
  }

  mutable std::mutex mutex_;
  std::uint64_t last_id_ = 0;
  std::vector<Operation> operations_;  // issue order
  std::vector<StagingSlot> staging_;
};

}  // namespace ferry::kernels::cuda
