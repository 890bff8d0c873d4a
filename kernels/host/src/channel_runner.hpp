// Running role steps: a task bundles role instances (all roles of one channel, or a single role when every
// role gets a thread of its own, as warps do on a GPU) with their scratch; run_tasks() steps a worker's tasks
// round-robin until they finish, fail, or stall past the timeout; WorkerPool keeps the helper threads of one
// engine alive between operations.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/kernels/host/host_io.hpp"
#include "ferry/kernels/protocol/step.hpp"

namespace ferry::kernels::host {

using RoleStep = std::function<protocol::StepResult(HostIo&)>;

struct ChannelTask {
  int channel = -1;  // -1: the notify step
  std::vector<RoleStep> roles;
  std::vector<protocol::StepResult> last;  // each role's latest report
  std::vector<std::uint8_t> finished;
  Clock::time_point last_progress;
  std::vector<std::shared_ptr<void>> scratch;  // role state; never moves (roles keep pointers into it)

  void add(RoleStep role) {
    roles.push_back(std::move(role));
    last.emplace_back();
    finished.push_back(0);
  }

  // `count` value-initialised T that live as long as the task.
  template <class T>
  T* make_scratch(std::size_t count) {
    std::shared_ptr<T[]> block(new T[count == 0 ? 1 : count]());
    T* data = block.get();
    scratch.push_back(std::move(block));
    return data;
  }
};

// The first failure of a phase stops every worker of the phase.
class PhaseState {
 public:
  bool aborted() const { return abort_.load(std::memory_order_acquire); }
  void fail(std::exception_ptr error);
  void rethrow();

 private:
  std::atomic<bool> abort_{false};
  std::mutex mutex_;
  std::exception_ptr error_;
};

struct RunContext {
  int rank = 0;
  Duration timeout = kDefaultTimeout;
  PeerHealth* health = nullptr;  // asked now and then while stalled
};

// Steps `tasks` until all are done and the worker's remote writer has handed over everything it holds.
void run_tasks(std::span<ChannelTask* const> tasks, HostIo& io, const RunContext& context, PhaseState& state);

class WorkerPool {
 public:
  explicit WorkerPool(int workers);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  int size() const { return static_cast<int>(helpers_.size()) + 1; }
  // Runs body(w) for every worker w, w = 0 on the calling thread, and returns when all have returned. `body`
  // must not throw (run_tasks reports through PhaseState).
  void run(const std::function<void(int)>& body);

 private:
  void helper_loop(int worker);

  std::vector<std::thread> helpers_;
  std::mutex mutex_;
  std::condition_variable wake_;
  std::condition_variable finished_;
  const std::function<void(int)>* body_ = nullptr;
  std::uint64_t generation_ = 0;
  int running_ = 0;
  bool stopping_ = false;
};

}  // namespace ferry::kernels::host
