// The stream of one Buffer: operations run one at a time, in issue order, on a thread of their own, and each
// completes an Event. The first failure poisons the queue: the rings are then in an unknown state, so every
// later operation fails at once with an error that quotes the first one. An operation that fails after it has
// run to completion on every ring (OperationRefused: outputs too small for what arrived) fails alone.
#pragma once

#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>

#include "ferry/buffer.hpp"
#include "ferry/core/error.hpp"

namespace ferry {

// Completion of an operation that runs on a GPU stream (device_backend.cpp): the Event asks it instead of
// waiting for a queue thread.
struct DeviceCompletion {
  virtual ~DeviceCompletion() = default;
  virtual bool test() = 0;  // finished, successfully or not
  virtual void wait() = 0;  // bounded; throws the operation's error
  virtual void stream_wait(void* stream) = 0;
};

struct Event::State {
  std::shared_ptr<DeviceCompletion> device;  // set for a CUDA Buffer's operations
  std::mutex mutex;
  std::condition_variable done_changed;
  bool done = false;
  std::exception_ptr error;
  // Timeline of the operation, for profilers (the trainer's overlap trace).
  std::chrono::steady_clock::time_point issued = std::chrono::steady_clock::now();
  std::chrono::steady_clock::time_point started = issued;
  std::chrono::steady_clock::time_point finished = issued;

  void start();

  void finish(std::exception_ptr failure);
};

// Thrown by an operation whose data phase finished on every ring, so the Buffer stays usable: its Event fails
// with `error`, and later operations run.
struct OperationRefused {
  Error error;
};

class OperationQueue {
 public:
  // `on_failure`: called once, on the queue's thread, with the first failure's message, after its Event
  // finished (a Group-backed Buffer reports it to the job's store, so that every rank learns of it).
  using FailureHook = std::function<void(const std::string& what)>;
  explicit OperationQueue(int rank, FailureHook on_failure = {});
  ~OperationQueue();  // runs what was issued, then stops
  OperationQueue(const OperationQueue&) = delete;
  OperationQueue& operator=(const OperationQueue&) = delete;

  Event submit(std::function<void()> work);

 private:
  struct Item {
    std::function<void()> work;
    std::shared_ptr<Event::State> state;
  };
  void loop();

  int rank_;
  std::mutex mutex_;
  std::condition_variable changed_;
  std::deque<Item> items_;
  bool stopping_ = false;
  FailureHook on_failure_;
  std::string first_failure_;  // owned by the queue thread
  std::thread thread_;
};

}  // namespace ferry
