#include "channel_runner.hpp"

#include <chrono>
#include <cstdio>

#include "describe.hpp"
#include "ferry/core/error.hpp"

namespace ferry::kernels::host {

void PhaseState::fail(std::exception_ptr error) {
  std::lock_guard lock(mutex_);
  if (!error_) error_ = error;
  abort_.store(true, std::memory_order_release);
}

void PhaseState::rethrow() {
  std::lock_guard lock(mutex_);
  if (error_) std::rethrow_exception(error_);
}

namespace {

[[noreturn]] void fail_stalled(const ChannelTask& task, const RunContext& context) {
  std::string message = channel_label(context.rank, task.channel);
  message += ": no progress for ";
  message += seconds_text(context.timeout);
  for (std::size_t i = 0; i < task.roles.size(); ++i) {
    if (task.finished[i]) continue;
    message += "; stage ";
    message += stage_name(task.last[i].stage);
    message += ' ';
    message += describe_wait(task.last[i].wait);
  }
  fail(Errc::timeout, message);
}

[[noreturn]] void fail_fault(const ChannelTask& task, const protocol::StepResult& result,
                             const RunContext& context) {
  fail(Errc::protocol, channel_label(context.rank, task.channel) + " stage " + stage_name(result.stage) +
                           (result.stage == protocol::Stage::dispatch_send ? " found " : " received ") +
                           describe_fault(result.fault));
}

// One pass over the task's unfinished roles. Returns whether any moved; throws on a fault.
bool step_task(ChannelTask& task, HostIo& io, const RunContext& context) {
  bool progressed = false;
  for (std::size_t i = 0; i < task.roles.size(); ++i) {
    if (task.finished[i]) continue;
    protocol::StepResult result = task.roles[i](io);
    task.last[i] = result;
    if (result.fault.any()) fail_fault(task, result, context);
    progressed = progressed || result.progressed;
    task.finished[i] = result.done ? 1 : 0;
  }
  return progressed;
}

bool task_done(const ChannelTask& task) {
  for (std::uint8_t finished : task.finished) {
    if (!finished) return false;
  }
  return true;
}

}  // namespace

void run_tasks(std::span<ChannelTask* const> tasks, HostIo& io, const RunContext& context,
               PhaseState& state) {
  // How often a stalled worker asks whether its peers are still alive.
  constexpr auto kHealthInterval = std::chrono::milliseconds(50);
  try {
    Clock::time_point start = Clock::now();
    Clock::time_point last_health = start;
    Clock::time_point flush_stalled_since{};
    for (ChannelTask* task : tasks) task->last_progress = start;
    Backoff backoff;
    while (!state.aborted()) {
      bool all_done = true;
      bool any_progress = false;
      Clock::time_point now{};
      for (ChannelTask* task : tasks) {
        if (task_done(*task)) continue;
        if (step_task(*task, io, context)) {
          if (now == Clock::time_point{}) now = Clock::now();
          task->last_progress = now;
          any_progress = true;
        }
        if (!task_done(*task)) all_done = false;
      }
      const bool flushed = io.remote() == nullptr || io.remote()->flush();
      if (all_done && flushed) return;
      if (any_progress) {
        backoff.reset();
        continue;
      }
      backoff.pause();
      now = Clock::now();
      for (ChannelTask* task : tasks) {
        if (!task_done(*task) && now - task->last_progress > context.timeout) fail_stalled(*task, context);
      }
      if (all_done) {  // only the writer's held commands are left: the proxy is not taking them
        if (flush_stalled_since == Clock::time_point{}) flush_stalled_since = now;
        if (now - flush_stalled_since > context.timeout) {
          fail(Errc::timeout, channel_label(context.rank, tasks.empty() ? -1 : tasks.front()->channel) +
                                  ": " + std::to_string(io.remote()->held()) +
                                  " fabric commands not taken by the proxy within " +
                                  seconds_text(context.timeout));
        }
      }
      if (context.health != nullptr && now - last_health > kHealthInterval) {
        last_health = now;
        context.health->check();
      }
    }
  } catch (...) {
    state.fail(std::current_exception());
  }
}

WorkerPool::WorkerPool(int workers) {
  for (int worker = 1; worker < workers; ++worker)
    helpers_.emplace_back([this, worker] { helper_loop(worker); });
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& helper : helpers_) helper.join();
}

void WorkerPool::run(const std::function<void(int)>& body) {
  {
    std::lock_guard lock(mutex_);
    body_ = &body;
    running_ = static_cast<int>(helpers_.size());
    ++generation_;
  }
  wake_.notify_all();
  body(0);
  // Helpers leave their loops on their own: on completion, on abort, or at their own deadline.
  std::unique_lock lock(mutex_);
  finished_.wait(lock, [this] { return running_ == 0; });
  body_ = nullptr;
}

void WorkerPool::helper_loop(int worker) {
  std::uint64_t seen = 0;
  std::unique_lock lock(mutex_);
  while (true) {
    wake_.wait(lock, [&] { return stopping_ || generation_ != seen; });
    if (stopping_) return;
    seen = generation_;
    const std::function<void(int)>* body = body_;
    lock.unlock();
    (*body)(worker);
    lock.lock();
    if (--running_ == 0) finished_.notify_all();
  }
}

}  // namespace ferry::kernels::host
