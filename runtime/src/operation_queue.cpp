#include "operation_queue.hpp"

#include "ferry/core/deadline.hpp"
#include "ferry/core/error.hpp"

namespace ferry {

void Event::State::start() {
  std::lock_guard lock(mutex);
  started = std::chrono::steady_clock::now();
}

void Event::State::finish(std::exception_ptr failure) {
  {
    std::lock_guard lock(mutex);
    finished = std::chrono::steady_clock::now();
    error = failure;
    done = true;
  }
  done_changed.notify_all();
}

Event::Event() : state_(std::make_shared<State>()) {
  state_->done = true;
}

Event::Event(std::shared_ptr<State> state) : state_(std::move(state)) {}

namespace {
// A device operation is seen finished (by test or wait) for the first time: its timeline ends now.
void mark_device_done(Event::State& state) {
  std::lock_guard lock(state.mutex);
  if (state.done) return;
  state.finished = std::chrono::steady_clock::now();
  state.done = true;
}
}  // namespace

bool Event::test() const {
  if (state_->device) {
    if (!state_->device->test()) return false;
    mark_device_done(*state_);
    return true;
  }
  std::lock_guard lock(state_->mutex);
  return state_->done;
}

void Event::stream_wait(void* stream) const {
  if (state_->device) {
    state_->device->stream_wait(stream);
    return;
  }
  wait();  // a host operation: the host waits, and the stream's later work sees its results
}

// No deadline of its own: every operation ends by itself, at the latest when a channel has made no progress
// for Config::timeout.
void Event::wait() const {
  if (state_->device) {
    try {
      state_->device->wait();
    } catch (...) {
      mark_device_done(*state_);
      throw;
    }
    mark_device_done(*state_);
    return;
  }
  std::unique_lock lock(state_->mutex);
  state_->done_changed.wait(lock, [this] { return state_->done; });
  if (!state_->error) return;
  // The stored exception is shared with the thread that failed the operation, which may release its reference
  // while this thread still reads the message: throw a copy of our own.
  try {
    std::rethrow_exception(state_->error);
  } catch (const Error& error) {
    throw Error::detached_copy(error);
  }
}

bool Event::wait_for(Duration timeout) const {
  if (state_->device) {
    Deadline deadline(timeout);
    Backoff backoff;
    while (!test()) {
      if (deadline.expired()) return false;
      backoff.pause();
    }
    return true;
  }
  std::unique_lock lock(state_->mutex);
  return state_->done_changed.wait_for(lock, timeout, [this] { return state_->done; });
}

Event::Times Event::times() const {
  std::lock_guard lock(state_->mutex);
  if (!state_->done) fail(Errc::invalid_argument, "Event::times() of an operation that has not finished");
  return Times{state_->issued, state_->started, state_->finished};
}

OperationQueue::OperationQueue(int rank, FailureHook on_failure)
    : rank_(rank), on_failure_(std::move(on_failure)), thread_([this] { loop(); }) {}

OperationQueue::~OperationQueue() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  thread_.join();
}

Event OperationQueue::submit(std::function<void()> work) {
  auto state = std::make_shared<Event::State>();
  {
    std::lock_guard lock(mutex_);
    items_.push_back({std::move(work), state});
  }
  changed_.notify_all();
  return Event(state);
}

void OperationQueue::loop() {
  while (true) {
    Item item;
    {
      std::unique_lock lock(mutex_);
      changed_.wait(lock, [this] { return stopping_ || !items_.empty(); });
      if (items_.empty()) return;  // stopping, and everything issued has run
      item = std::move(items_.front());
      items_.pop_front();
    }
    if (!first_failure_.empty()) {
      item.state->finish(std::make_exception_ptr(Error(
          Errc::peer_failure, "rank " + std::to_string(rank_) +
                                  ": operation not run because an earlier one failed: " + first_failure_)));
      continue;
    }
    item.state->start();
    try {
      item.work();
      item.state->finish(nullptr);
    } catch (const OperationRefused& refused) {
      item.state->finish(std::make_exception_ptr(refused.error));
    } catch (const std::exception& error) {
      first_failure_ = error.what();
      item.state->finish(std::current_exception());
    } catch (...) {
      first_failure_ = "unknown exception";
      item.state->finish(std::current_exception());
    }
    if (!first_failure_.empty() && on_failure_) {
      on_failure_(first_failure_);
      on_failure_ = nullptr;
    }
  }
}

}  // namespace ferry
