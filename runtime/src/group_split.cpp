// Group::split: a sub-group over some of a group's ranks (see group.hpp for the contract).
//
// A sub-group is an ordinary Group joined through Group::join: its own connection to the root's store, no
// server, every key under a prefix that only its members use:
//
//   <parent prefix>ferry/split/<name>/<round>/<hash of members>/
//
// The round (how many times this rank has split with this name before) keeps a rebuilt sub-group from
// reading the keys its predecessor left in the store; the members' hash keeps members that disagree on the
// member list from mixing their records (they time out instead, with a hint). Names must differ between
// siblings, because the job id "<parent job id>.<name>" names their shm segments: the sub-group's rank 0
// claims the name with a counter under the parent's prefix, and a second claimant is refused on all of its
// members at once.
#include <cstdint>
#include <cstdio>
#include <span>
#include <string>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/store.hpp"

namespace ferry {
namespace {

// Ranks listed in a message before the rest is summarized as a count.
constexpr std::size_t kMaxListed = 16;

std::string list_ranks(std::span<const int> ranks) {
  std::string text;
  for (std::size_t i = 0; i < ranks.size() && i < kMaxListed; ++i)
    text += (i ? ", " : "") + std::to_string(ranks[i]);
  if (ranks.size() > kMaxListed) text += ", ... (" + std::to_string(ranks.size() - kMaxListed) + " more)";
  return "{" + text + "}";
}

std::string describe_char(char c) {
  if (c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' || c == '\v') return "whitespace";
  if (c > ' ' && c < 0x7f) return std::string("'") + c + "'";
  char hex[8];
  std::snprintf(hex, sizeof(hex), "0x%02x", static_cast<unsigned>(static_cast<unsigned char>(c)));
  return std::string("the byte ") + hex;
}

// Only [A-Za-z0-9_]: '/' would break the key prefix apart, '.' would make "<job>.a.b" ambiguous between a
// nested split and a sibling named "a.b", and shm segment names fold every other character into '_', so
// siblings "a-b" and "a_b" would share segment names.
void validate_name(const std::string& name) {
  if (name.empty()) fail(Errc::invalid_argument, "Group::split: the name is empty");
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_';
    if (!ok) {
      fail(Errc::invalid_argument, "Group::split: name '" + name + "' contains " + describe_char(c) +
                                       "; use letters, digits and '_' only (the name becomes part of the "
                                       "sub-group's job id and of its shm segment names)");
    }
  }
}

struct SubLayout {
  int rank = 0;        // the caller's sub-rank
  int local_size = 0;  // members per node
};

SubLayout validate_members(const Group& parent, const std::string& name, std::span<const int> members) {
  const std::string what = "Group::split '" + name + "'";
  if (members.empty()) fail(Errc::invalid_argument, what + ": members is empty");
  for (std::size_t i = 0; i < members.size(); ++i) {
    const int m = members[i];
    if (m < 0 || m >= parent.world_size()) {
      fail(Errc::invalid_argument, what + ": member " + std::to_string(m) +
                                       " is not a rank of this group (0 to " +
                                       std::to_string(parent.world_size() - 1) + ")");
    }
    if (i == 0) continue;
    if (m == members[i - 1]) {
      fail(Errc::invalid_argument,
           what + ": rank " + std::to_string(m) + " is listed twice in members " + list_ranks(members));
    }
    if (m < members[i - 1]) {
      fail(Errc::invalid_argument, what + ": members must be ascending, but " +
                                       std::to_string(members[i - 1]) + " comes before " + std::to_string(m) +
                                       " in " + list_ranks(members));
    }
  }
  SubLayout layout;
  layout.rank = -1;
  for (std::size_t i = 0; i < members.size(); ++i) {
    if (members[i] == parent.rank()) layout.rank = static_cast<int>(i);
  }
  if (layout.rank < 0) {
    fail(Errc::invalid_argument, what + ": rank " + std::to_string(parent.rank()) +
                                     " called split but is not among the members " + list_ranks(members) +
                                     " (only the members call it)");
  }
  // Ascending members of a node-major layout: each node's members are one run, and nodes appear in order.
  std::vector<std::size_t> run_starts{0};
  for (std::size_t i = 1; i < members.size(); ++i) {
    if (parent.ranks()[members[i]].node != parent.ranks()[members[i - 1]].node) run_starts.push_back(i);
  }
  run_starts.push_back(members.size());
  const std::size_t per_node = run_starts[1];
  for (std::size_t n = 1; n + 1 < run_starts.size(); ++n) {
    const std::size_t count = run_starts[n + 1] - run_starts[n];
    if (count == per_node) continue;
    auto first = members.subspan(0, per_node);
    auto other = members.subspan(run_starts[n], count);
    fail(Errc::invalid_argument,
         what + ": ferry needs the same number of members on every node they touch, but node " +
             std::to_string(parent.ranks()[first[0]].node) + " has " + std::to_string(per_node) + " " +
             list_ranks(first) + " and node " + std::to_string(parent.ranks()[other[0]].node) + " has " +
             std::to_string(count) + " " + list_ranks(other));
  }
  layout.local_size = static_cast<int>(per_node);
  return layout;
}

// FNV-1a over the member list: distinct lists get distinct key prefixes, whatever their length.
std::string members_hash(std::span<const int> members) {
  std::uint64_t hash = 14695981039346656037ull;
  for (int m : members) {
    for (char c : std::to_string(m) + ",") {
      hash ^= static_cast<unsigned char>(c);
      hash *= 1099511628211ull;
    }
  }
  char text[17];
  std::snprintf(text, sizeof(text), "%016llx", static_cast<unsigned long long>(hash));
  return text;
}

}  // namespace

Group Group::split(const std::string& name, std::span<const int> members) {
  validate_name(name);
  const SubLayout layout = validate_members(*this, name, members);
  const std::uint64_t round = next_split_round(name);

  JobEnv sub;
  sub.launcher = job().launcher;
  sub.rank = layout.rank;
  sub.world_size = static_cast<int>(members.size());
  sub.local_size = layout.local_size;
  sub.local_rank = layout.rank % layout.local_size;
  sub.store_host = job().store_host;
  sub.store_port = store_port();
  sub.secret = job().secret;
  sub.job_id = job().job_id + "." + name;
  sub.node_address = job().node_address;

  // The name's claim lives under this group's prefix, outside any sub-group's: all claimants meet there.
  const std::string base = "ferry/split/" + name + "/" + std::to_string(round) + "/";
  std::string refusal;
  if (sub.rank == 0 && store().add(base + "claims", 1) != 1) {
    refusal = "Group::split '" + name + "' " + list_ranks(members) +
              ": another sub-group of this group already took that name (round " + std::to_string(round) +
              "); sibling sub-groups need distinct names, which make their job ids ('" + sub.job_id +
              "') and shm segment names";
  }
  GroupOptions options;
  options.timeout = store().timeout();
  try {
    Group group = join(sub, options, false, key_prefix() + base + members_hash(members) + "/", refusal,
                       failure_watch());
    std::vector<int> ranks;
    for (int member : members) ranks.push_back(job_ranks()[static_cast<std::size_t>(member)]);
    group.set_job_ranks(std::move(ranks));
    return group;
  } catch (const Error& error) {
    if (error.code() != Errc::timeout) throw;
    fail(Errc::timeout,
         "Group::split '" + name + "' " + list_ranks(members) + " (round " + std::to_string(round) +
             " of this name on rank " + std::to_string(rank()) + "): " + error.what() +
             " (every member must call split with the same name and members, in the same order)");
  }
}

}  // namespace ferry
