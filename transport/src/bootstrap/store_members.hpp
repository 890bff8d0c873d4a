// Who has joined which group of the job, and whether the job has failed: the store server's bookkeeping for
// JOIN, LEAVE, MEMBERS, FAIL and connections that close (wire format: store_protocol.hpp). No sockets here,
// so the fuzz target drives it with the rest of the request handling.
//
// A group is the key prefix of a ferry::Group ("" for the whole job, one per sub-group). A rank joins a group
// once, with the world size it believes in; a second claim of the rank, or a world size that disagrees with
// the first joiner's, is refused and fails the job, so every process hears of it, not only the one refused.
// A member whose connection closes before LEAVE is lost, which also fails the job: its process died (or
// left without checking out), and whoever waits for it would otherwise wait for the whole timeout.
//
// The job's failure is one text, the first reported; later reports are dropped, so every rank names the same
// cause.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

namespace ferry::transport {

class Membership {
 public:
  // Where a connection joined: its group and rank, or nothing.
  struct Seat {
    bool joined = false;
    std::string group;
    std::uint32_t rank = 0;
  };

  // Joins `rank` of `group` (world size `world`, `label` says who it is in messages) and fills `seat`. On
  // refusal returns the reason, and records it as the job's failure when it concerns the whole job (a rank
  // claimed twice, world sizes that disagree, but not a job that has failed already).
  std::string join(const std::string& group, std::uint32_t rank, std::uint32_t world, std::string label,
                   Seat& seat);
  // The seat's rank checked out: it no longer counts as present, and its closing is no failure.
  void leave(Seat& seat);
  // What lost() did: whether the seat's rank was counted lost (the `index`-th of its group, from 1) and
  // whether that recorded the job's failure just now.
  struct Loss {
    bool counted = false;
    bool job_failed = false;
    std::string group;
    std::uint32_t rank = 0;
    std::uint64_t index = 0;
  };
  // The seat's connection closed or was dropped (`how` says which, for the message): a rank that had not left
  // is lost, which fails the job.
  Loss lost(Seat& seat, const std::string& how);
  // Ranks of `group` that joined and neither left nor were lost.
  std::size_t present(const std::string& group) const;

  // Records `text` as the job's failure unless there already is one; true when this was the first.
  bool fail(std::string text);
  bool failed() const { return !failure_.empty(); }
  const std::string& failure() const { return failure_; }

  std::size_t groups() const { return groups_.size(); }

 private:
  enum class State { present, left, lost };
  struct Member {
    std::string label;
    State state = State::present;
  };
  struct Group {
    std::uint32_t world = 0;
    std::uint32_t first_rank = 0;  // the first to join: the reference for the world size
    std::map<std::uint32_t, Member> members;
    std::size_t present = 0;
    std::size_t departed = 0;  // left or lost
    std::uint64_t lost = 0;
  };

  std::string describe(const std::string& group, std::uint32_t rank, const std::string& label) const;
  // Forgets a group every rank of which has departed: its keys are gone, nothing of it is asked again.
  void forget_if_done(std::map<std::string, Group>::iterator it);

  std::map<std::string, Group> groups_;
  std::string failure_;
};

}  // namespace ferry::transport
