#include "group_runner.hpp"

#include <chrono>
#include <cstdio>
#include <memory>
#include <thread>

#include "describe.hpp"
#include "ferry/core/error.hpp"

namespace ferry::kernels::host {

namespace {

struct JobState {
  protocol::RoleOutcome outcome;
  protocol::Traffic traffic;  // the leader's
  std::exception_ptr failure;
};

// The leader hands over what its writer still holds; its lanes have left.
void drain(RemoteWriter* writer, Duration timeout) {
  if (writer == nullptr) return;
  Deadline deadline(timeout);
  Backoff backoff;
  while (!writer->flush()) {
    if (deadline.expired()) {
      fail(Errc::timeout, std::to_string(writer->held()) + " fabric commands not taken by the proxy within " +
                              seconds_text(timeout));
    }
    backoff.pause();
  }
}

}  // namespace

void run_groups(const std::vector<GroupJob>& jobs, const GroupRun& run, protocol::Traffic& total) {
  std::atomic<bool> abort{false};
  std::vector<JobState> states(jobs.size());
  std::vector<std::unique_ptr<LaneGroup>> groups;
  for (std::size_t j = 0; j < jobs.size(); ++j) groups.push_back(std::make_unique<LaneGroup>(run.lanes));
  std::vector<std::thread> threads;
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    for (int lane = 0; lane < run.lanes; ++lane) {
      threads.emplace_back([&, j, lane] {
        JobState& state = states[j];
        protocol::Traffic scratch;
        LaneIo io(*groups[j], lane, run.local, run.node, run.writers[j],
                  lane == 0 ? &state.traffic : &scratch, &abort, run.health);
        protocol::RoleOutcome outcome = jobs[j].run(io);
        if (lane != 0) return;
        state.outcome = outcome;
        state.failure = io.failure();
        try {
          if (!state.failure && outcome.end == protocol::RoleEnd::done) drain(run.writers[j], run.timeout);
          if (!state.failure && outcome.end == protocol::RoleEnd::timeout && run.health != nullptr) {
            run.health->check();  // a dead peer explains a stall better than the stall does
          }
        } catch (...) {
          state.failure = std::current_exception();
        }
        if (state.failure || outcome.end != protocol::RoleEnd::done)
          abort.store(true, std::memory_order_release);
      });
    }
  }
  for (std::thread& thread : threads) thread.join();
  for (const JobState& state : states) total.add(state.traffic);
  for (std::size_t j = 0; j < jobs.size(); ++j) {
    const JobState& state = states[j];
    if (state.failure) std::rethrow_exception(state.failure);
    const protocol::StepResult& last = state.outcome.last;
    const std::string where = channel_label(run.rank, jobs[j].channel);
    if (state.outcome.end == protocol::RoleEnd::fault) {
      fail(Errc::protocol, where + " stage " + stage_name(last.stage) +
                               (last.stage == protocol::Stage::dispatch_send ? " found " : " received ") +
                               describe_fault(last.fault));
    }
    if (state.outcome.end == protocol::RoleEnd::timeout) {
      fail(Errc::timeout, where + ": no progress for " + seconds_text(run.timeout) + "; stage " +
                              stage_name(last.stage) + " " + describe_wait(last.wait));
    }
  }
}

}  // namespace ferry::kernels::host
