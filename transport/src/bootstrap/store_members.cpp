#include "bootstrap/store_members.hpp"

#include <utility>

#include "bootstrap/store_protocol.hpp"

namespace ferry::transport {

std::string Membership::describe(const std::string& group, std::uint32_t rank,
                                 const std::string& label) const {
  std::string text = "rank " + std::to_string(rank);
  if (!label.empty()) text += " (" + label + ")";
  if (!group.empty()) text += " of sub-group '" + group + "'";
  return text;
}

std::string Membership::join(const std::string& group, std::uint32_t rank, std::uint32_t world,
                             std::string label, Seat& seat) {
  if (failed()) return failure_;
  if (seat.joined) {
    return "this connection already joined as rank " + std::to_string(seat.rank) +
           (seat.group.empty() ? "" : " of sub-group '" + seat.group + "'");
  }
  if (world == 0 || rank >= world) {
    return describe(group, rank, label) + " is outside the world of " + std::to_string(world) +
           " ranks it claims";
  }
  auto [it, fresh] = groups_.try_emplace(group);
  Group& entry = it->second;
  if (fresh) {
    entry.world = world;
    entry.first_rank = rank;
  } else if (entry.world != world) {
    const std::string first = describe(group, entry.first_rank, entry.members.at(entry.first_rank).label);
    fail("ranks disagree on the world size: " + first + " joined a world of " + std::to_string(entry.world) +
         " ranks, " + describe(group, rank, label) + " a world of " + std::to_string(world) +
         " (every rank must be started with the same WORLD_SIZE)");
    return failure_;
  }
  auto [member, claimed] = entry.members.try_emplace(rank);
  if (!claimed) {
    fail("rank " + std::to_string(rank) + (group.empty() ? "" : " of sub-group '" + group + "'") +
         " is claimed twice: by " + (member->second.label.empty() ? "one process" : member->second.label) +
         " (joined first) and by " + (label.empty() ? "another" : label) +
         "; every rank must be started exactly once");
    return failure_;
  }
  member->second.label = std::move(label);
  ++entry.present;
  seat.joined = true;
  seat.group = group;
  seat.rank = rank;
  return {};
}

void Membership::leave(Seat& seat) {
  if (!seat.joined) return;
  seat.joined = false;
  auto it = groups_.find(seat.group);
  if (it == groups_.end()) return;
  auto member = it->second.members.find(seat.rank);
  if (member == it->second.members.end() || member->second.state != State::present) return;
  member->second.state = State::left;
  --it->second.present;
  ++it->second.departed;
  forget_if_done(it);
}

Membership::Loss Membership::lost(Seat& seat, const std::string& how) {
  Loss loss;
  if (!seat.joined) return loss;
  seat.joined = false;
  auto it = groups_.find(seat.group);
  if (it == groups_.end()) return loss;
  auto member = it->second.members.find(seat.rank);
  if (member == it->second.members.end() || member->second.state != State::present) return loss;
  member->second.state = State::lost;
  --it->second.present;
  ++it->second.departed;
  loss.counted = true;
  loss.group = seat.group;
  loss.rank = seat.rank;
  loss.index = ++it->second.lost;
  loss.job_failed = fail(describe(seat.group, seat.rank, member->second.label) + " is gone: " + how);
  forget_if_done(it);
  return loss;
}

std::size_t Membership::present(const std::string& group) const {
  auto it = groups_.find(group);
  return it == groups_.end() ? 0 : it->second.present;
}

bool Membership::fail(std::string text) {
  if (failed()) return false;
  failure_ = text.empty() ? std::string("a rank reported a failure without saying what") : std::move(text);
  // Bounded, so that every client can read it in an ERROR whatever its own size limit (store_client.cpp).
  if (failure_.size() > wire::kMaxFailureBytes) failure_.resize(wire::kMaxFailureBytes);
  return true;
}

void Membership::forget_if_done(std::map<std::string, Group>::iterator it) {
  if (it->second.departed == it->second.world) groups_.erase(it);
}

}  // namespace ferry::transport
