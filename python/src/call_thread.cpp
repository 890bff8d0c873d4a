#include "call_thread.hpp"

#include <utility>

#include "waits.hpp"

namespace ferry::python {

CallThread::CallThread() : state_(std::make_shared<State>()), thread_([state = state_] { serve(state); }) {}

CallThread::~CallThread() {
  if (!thread_.joinable()) return;
  {
    std::lock_guard lock(state_->mutex);
    state_->stop = true;
  }
  state_->changed.notify_all();
  thread_.join();
}

void CallThread::serve(const std::shared_ptr<State>& state) {
  while (true) {
    std::shared_ptr<Job> job;
    {
      std::unique_lock lock(state->mutex);
      state->changed.wait(lock, [&] { return state->stop || !state->queue.empty(); });
      if (state->queue.empty()) return;  // stopped with nothing left
      job = std::move(state->queue.front());
      state->queue.pop_front();
    }
    std::exception_ptr error;
    try {
      job->work();
    } catch (...) {
      error = std::current_exception();
    }
    job->work = nullptr;  // what the call held goes here, on this thread, not under the lock
    {
      std::lock_guard lock(state->mutex);
      job->error = error;
      job->done = true;
    }
    state->changed.notify_all();
  }
}

void CallThread::run(std::function<void()> work) {
  auto job = std::make_shared<Job>();
  job->work = std::move(work);
  {
    std::lock_guard lock(state_->mutex);
    state_->queue.push_back(job);
  }
  state_->changed.notify_all();
  const std::shared_ptr<State> state = state_;
  wait_until([&](Duration timeout) {
    std::unique_lock lock(state->mutex);
    return state->changed.wait_for(lock, timeout, [&] { return job->done; });
  });
  if (job->error) std::rethrow_exception(job->error);
}

void CallThread::abandon() {
  if (thread_.joinable()) thread_.detach();  // keeps its State: the thread holds a reference
}

}  // namespace ferry::python
