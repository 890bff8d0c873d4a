// A thread that runs ferry's blocking low-latency calls for the Python thread, which waits for each with the
// GIL released, in kSignalPoll slices, so that Ctrl-C ends the wait (waits.hpp). ferry::LowLatencyBuffer runs
// a call (and a receive hook) on the caller's thread and cannot be interrupted; here the call goes on after
// an interrupted wait, owning everything it uses (the job is a closure holding its inputs by value), and the
// Python layer abandons the Buffer (ferry/buffer.py).
//
// Calls run one at a time, in the order they were handed over, whichever Python thread hands them over.
#pragma once

#include <condition_variable>
#include <deque>
#include <exception>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>

namespace ferry::python {

class CallThread {
 public:
  CallThread();
  ~CallThread();  // finishes the queued calls, then joins (unless abandoned)
  CallThread(const CallThread&) = delete;
  CallThread& operator=(const CallThread&) = delete;

  // Called with the GIL held: runs `job` on this thread and waits for it (GIL released, Ctrl-C interrupts:
  // then the Python error is raised and the job goes on). Rethrows the job's exception.
  void run(std::function<void()> job);

  // After an interrupted wait: the thread and what it still runs are left to the end of the process.
  void abandon();

 private:
  struct Job {
    std::function<void()> work;
    bool done = false;
    std::exception_ptr error;
  };
  struct State {
    std::mutex mutex;
    std::condition_variable changed;
    std::deque<std::shared_ptr<Job>> queue;
    bool stop = false;
  };

  static void serve(const std::shared_ptr<State>& state);

  std::shared_ptr<State> state_;
  std::thread thread_;
};

}  // namespace ferry::python
