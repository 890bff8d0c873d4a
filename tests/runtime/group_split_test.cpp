// Group::split with ranks as threads of this process: sub-group layout and identity, collectives of the same
// names in sibling sub-groups at once, nested and rebuilt sub-groups, the refusals, a Buffer on each
// sub-group; and the store's key prefix underneath.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <future>
#include <mutex>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "../peer/rank_threads.hpp"
#include "common/thread_check.hpp"
#include "ferry/core/error.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/store.hpp"
#include "group_split_exercise.hpp"

using namespace std::chrono_literals;
using Catch::Matchers::Contains;
using ferry::Errc;
using ferry::Group;

namespace {

using Bytes = std::vector<std::uint8_t>;

using ferry::test::expect;
#define EXPECT(group, condition) FERRY_EXPECT_ON_RANK(group, condition)

// The ranks check on their threads (EXPECT throws); the test asserts, on the main thread, that none failed.
template <typename Body>
void run_ranks(int world, int local_size, const std::string& job_id, Body body,
               std::chrono::milliseconds timeout = 20s) {
  REQUIRE_NOTHROW(ferry::test::run_ranks(world, local_size, job_id, body, timeout));
}

// The parent ranks sharing this rank's local rank: {0, 2} and {1, 3} on 2 nodes x 2.
std::vector<int> lane_of(const Group& group) {
  std::vector<int> members;
  for (int node = 0; node < group.num_nodes(); ++node)
    members.push_back(node * group.local_size() + group.local_rank());
  return members;
}

std::string lane_name(const Group& group) {
  return "lane" + std::to_string(group.local_rank());
}

Bytes byte_of(int value) {
  return Bytes{static_cast<std::uint8_t>(value)};
}

// Runs `call`, returning the ferry::Error it throws; fails when it does not throw.
template <typename Call>
std::pair<Errc, std::string> error_of(Call call) {
  try {
    call();
  } catch (const ferry::Error& e) {
    return {e.code(), e.what()};
  }
  throw std::runtime_error("expected a ferry::Error");
}

bool contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

TEST_CASE("split: {0,2} and {1,3} of 2 nodes x 2 become 2 nodes x 1 each, with the parents' rank info",
          "[group][split]") {
  run_ranks(4, 2, ferry::test::unique_job_id("split-lanes"), [](Group& group) {
    const std::vector<int> members = lane_of(group);
    Group lane = group.split(lane_name(group), members);
    EXPECT(group, lane.world_size() == 2);
    EXPECT(group, lane.num_nodes() == 2);
    EXPECT(group, lane.local_size() == 1);
    EXPECT(group, lane.rank() == group.node());
    EXPECT(group, lane.node() == group.node());
    EXPECT(group, lane.local_rank() == 0);
    EXPECT(group, lane.job().job_id == group.job().job_id + "." + lane_name(group));
    EXPECT(group, lane.job().secret == group.job().secret);
    EXPECT(group, lane.job().store_port == group.job().store_port);
    EXPECT(group, lane.ranks().size() == 2);
    for (int r = 0; r < 2; ++r) {
      const ferry::RankInfo& mine = lane.ranks()[r];
      const ferry::RankInfo& parent = group.ranks()[members[r]];
      EXPECT(group, mine.rank == r);
      EXPECT(group, mine.node == r);
      EXPECT(group, mine.local_rank == 0);
      EXPECT(group, mine.hostname == parent.hostname);
      EXPECT(group, mine.address == parent.address);
      EXPECT(group, mine.pid == parent.pid);
    }
  });
}

TEST_CASE("split: sibling sub-groups run collectives of the same names at once, each on its own data",
          "[group][split]") {
  run_ranks(4, 2, ferry::test::unique_job_id("split-collectives"), [](Group& group) {
    const std::vector<int> members = lane_of(group);
    Group lane = group.split(lane_name(group), members);
    const auto tag = static_cast<std::uint8_t>('A' + group.local_rank());
    for (int round = 0; round < 4; ++round) {
      const auto r8 = static_cast<std::uint8_t>(round);
      lane.barrier("step");
      auto all = lane.all_gather("data", Bytes{tag, static_cast<std::uint8_t>(group.rank()), r8});
      EXPECT(group, all.size() == 2);
      for (int r = 0; r < 2; ++r)
        EXPECT(group, (all[r] == Bytes{tag, static_cast<std::uint8_t>(members[r]), r8}));
      // The parent's collectives of the same names are another conversation.
      auto parent = group.all_gather("data", byte_of(100 + group.rank()));
      EXPECT(group, parent.size() == 4);
      for (int r = 0; r < 4; ++r) EXPECT(group, parent[r] == byte_of(100 + r));
      // So are plain keys: the same key in both sub-groups holds each one's own value.
      if (lane.rank() == 0) lane.store().set("shared-key", Bytes{tag, r8});
      lane.barrier("step");
      EXPECT(group, (lane.store().get("shared-key") == Bytes{tag, r8}));
      lane.barrier("read");
    }
  });
}

TEST_CASE("split: a sub-group splits again, and nested names do not meet across parents", "[group][split]") {
  run_ranks(4, 2, ferry::test::unique_job_id("split-nested"), [](Group& group) {
    const std::vector<int> lane_members = lane_of(group);
    Group lane = group.split(lane_name(group), lane_members);
    // Both lanes name their child "pair": different parents, so no clash.
    const int members[] = {0, 1};
    Group pair = lane.split("pair", members);
    EXPECT(group, pair.world_size() == 2);
    EXPECT(group, pair.num_nodes() == 2);
    EXPECT(group, pair.rank() == lane.rank());
    EXPECT(group, pair.job().job_id == group.job().job_id + "." + lane_name(group) + ".pair");
    EXPECT(group, pair.ranks()[1].pid == group.ranks()[lane_members[1]].pid);
    auto all = pair.all_gather("data", byte_of(group.rank()));
    EXPECT(group, (all == std::vector<Bytes>{byte_of(lane_members[0]), byte_of(lane_members[1])}));
    // A one-rank grandchild: 1 node x 1.
    const int self[] = {pair.rank()};
    Group solo = pair.split("solo" + std::to_string(pair.rank()), self);
    EXPECT(group, solo.world_size() == 1);
    EXPECT(group, solo.rank() == 0);
    EXPECT(group, solo.job().job_id == pair.job().job_id + ".solo" + std::to_string(pair.rank()));
    solo.barrier("alone");
    EXPECT(group, solo.all_gather("data", Bytes{7}) == std::vector<Bytes>{Bytes{7}});
    // The parents still work after their children are done with.
    pair.barrier("after");
    lane.barrier("after");
  });
}

TEST_CASE("split: 1 node x 4 into {0,1} and {2,3}: 1 node x 2 each", "[group][split]") {
  run_ranks(4, 4, ferry::test::unique_job_id("split-halves"), [](Group& group) {
    const int half = group.rank() / 2;
    const std::vector<int> members = {2 * half, 2 * half + 1};
    Group sub = group.split("half" + std::to_string(half), members);
    EXPECT(group, sub.world_size() == 2);
    EXPECT(group, sub.num_nodes() == 1);
    EXPECT(group, sub.local_size() == 2);
    EXPECT(group, sub.rank() == group.rank() % 2);
    EXPECT(group, sub.local_rank() == group.rank() % 2);
    EXPECT(group, sub.ranks()[1].local_rank == 1);
    EXPECT(group, sub.ranks()[1].node == 0);
    auto all = sub.all_gather("data", byte_of(group.rank()));
    EXPECT(group, (all == std::vector<Bytes>{byte_of(members[0]), byte_of(members[1])}));
  });
}

TEST_CASE("split: a rebuilt sub-group of the same name does not read its predecessor's keys",
          "[group][split]") {
  run_ranks(4, 2, ferry::test::unique_job_id("split-rebuild"), [](Group& group) {
    for (std::uint8_t generation = 1; generation <= 3; ++generation) {
      Group lane = group.split(lane_name(group), lane_of(group));
      auto all = lane.all_gather("data", Bytes{generation, static_cast<std::uint8_t>(group.rank())});
      for (int r = 0; r < 2; ++r)
        EXPECT(group, (all[r] == Bytes{generation, static_cast<std::uint8_t>(lane_of(group)[r])}));
    }
  });
}

TEST_CASE("split: a single-process job (port 0 in its env) splits through the store's real port",
          "[group][split]") {
  ferry::JobEnv job;  // launcher single, port 0: the store picks a free port
  job.job_id = ferry::test::unique_job_id("split-single");
  job.secret = "s";
  Group group = Group::from_job(job);
  REQUIRE(group.job().store_port == 0);
  const int members[] = {0};
  Group solo = group.split("solo", members);
  CHECK(solo.job().store_port != 0);
  CHECK(solo.world_size() == 1);
  solo.barrier("b");
  CHECK(solo.all_gather("g", Bytes{1}) == std::vector<Bytes>{Bytes{1}});
}

TEST_CASE("split: siblings that take the same name are refused on all their members", "[group][split]") {
  std::mutex mutex;
  std::vector<int> refused, joined;
  run_ranks(4, 2, ferry::test::unique_job_id("split-same-name"), [&](Group& group) {
    try {
      Group lane = group.split("ep", lane_of(group));
      lane.barrier("joined");
      std::lock_guard<std::mutex> lock(mutex);
      joined.push_back(group.rank());
    } catch (const ferry::Error& e) {
      EXPECT(group, e.code() == Errc::invalid_argument);
      EXPECT(group, contains(e.what(), "another sub-group of this group already took that name"));
      std::lock_guard<std::mutex> lock(mutex);
      refused.push_back(group.rank());
    }
  });
  std::sort(refused.begin(), refused.end());
  std::sort(joined.begin(), joined.end());
  // Whichever lane claimed "ep" first keeps it; the other fails as a whole.
  CHECK(((refused == std::vector<int>{0, 2} && joined == std::vector<int>{1, 3}) ||
         (refused == std::vector<int>{1, 3} && joined == std::vector<int>{0, 2})));
}

TEST_CASE("split: members that disagree on the member list time out with a hint", "[group][split]") {
  std::mutex mutex;
  std::vector<std::string> errors(4);
  run_ranks(
      4, 4, ferry::test::unique_job_id("split-disagree"),
      [&](Group& group) {
        if (group.rank() == 3) return;
        // Ranks 0 and 1 form {0, 1}; rank 2 believes in {0, 1, 2} and waits for them in vain.
        const std::vector<int> members =
            group.rank() < 2 ? std::vector<int>{0, 1} : std::vector<int>{0, 1, 2};
        try {
          Group sub = group.split("x", members);
        } catch (const ferry::Error& e) {
          std::lock_guard<std::mutex> lock(mutex);
          errors[group.rank()] = std::string(ferry::to_string(e.code())) + ": " + e.what();
        }
      },
      3s);
  CHECK(errors[0].empty());
  CHECK(errors[1].empty());
  CHECK_THAT(errors[2], Contains("timeout: Group::split 'x' {0, 1, 2}"));
  CHECK_THAT(errors[2], Contains("every member must call split with the same name and members"));
}

TEST_CASE("split: bad names and members are refused, naming the problem", "[group][split]") {
  run_ranks(4, 2, ferry::test::unique_job_id("split-bad"), [](Group& group) {
    const int r = group.rank();
    auto refused = [&](const std::string& name, std::vector<int> members, const std::string& expected) {
      auto [code, message] = error_of([&] { group.split(name, members); });
      expect(code == Errc::invalid_argument && contains(message, expected),
             "rank " + std::to_string(r) + ", name '" + name + "': expected invalid_argument with '" +
                 expected + "', got " + std::string(ferry::to_string(code)) + ": " + message);
    };
    refused("", {r}, "the name is empty");
    refused("a/b", {r}, "contains '/'");
    refused("a b", {r}, "contains whitespace");
    refused("a\tb", {r}, "contains whitespace");
    refused("a.b", {r}, "contains '.'");
    refused("ok", {}, "'ok': members is empty");
    refused("ok", {r, 4}, "member 4 is not a rank of this group (0 to 3)");
    refused("ok", {-1, r}, "member -1 is not a rank of this group");
    refused("ok", {r, r}, "rank " + std::to_string(r) + " is listed twice");
    refused("ok", {3, 0}, "members must be ascending, but 3 comes before 0");
    refused("ok", {(r + 1) % 4}, "rank " + std::to_string(r) + " called split but is not among the members");
    // Node 0 would hold 2 members, node 1 only one (or the other way round).
    std::vector<int> uneven = r < 3 ? std::vector<int>{0, 1, 2} : std::vector<int>{1, 2, 3};
    refused("ok", uneven,
            r < 3 ? "node 0 has 2 {0, 1} and node 1 has 1 {2}" : "node 0 has 1 {1} and node 1 has 2 {2, 3}");
    // Nothing was left half-done: a valid split still works.
    Group lane = group.split("ok" + std::to_string(group.local_rank()), lane_of(group));
    EXPECT(group, lane.all_gather("data", byte_of(r)).size() == 2);
  });
}

TEST_CASE("split: a Buffer on each sub-group dispatches and combines, both at once, then one on the parent",
          "[group][split][buffer]") {
  const std::uint64_t seed = ferry::test::test_seed();
  std::printf("split buffer: seed %llu (set FERRY_TEST_SEED to repeat)\n",
              static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  run_ranks(
      4, 2, ferry::test::unique_job_id("split-buffer"),
      [&](Group& group) {
        Group lane = group.split(lane_name(group), lane_of(group));
        {
          ferry::Buffer buffer(lane, ferry::test::split_test_config(lane));
          std::string diff = ferry::test::run_rounds(buffer, lane, seed, 2);
          expect(diff.empty(), diff);
        }
        ferry::Buffer whole(group, ferry::test::split_test_config(group));
        std::string diff = ferry::test::run_rounds(whole, group, seed, 1);
        expect(diff.empty(), diff);
      },
      60s);
}

TEST_CASE("store: a key prefix keeps clients of one server apart", "[store][split]") {
  ferry::transport::StoreOptions options;
  options.secret = "prefix-secret";
  options.timeout = 10s;
  ferry::transport::StoreServer server(options);
  options.port = server.port();
  auto client = [&](const std::string& prefix) {
    ferry::transport::StoreOptions mine = options;
    mine.key_prefix = prefix;
    return std::make_unique<ferry::transport::Store>(mine);
  };
  auto plain = client("");
  auto a = client("a/");
  auto b = client("b/");
  a->set("k", Bytes{1});
  b->set("k", Bytes{2});
  CHECK(a->get("k") == Bytes{1});
  CHECK(b->get("k") == Bytes{2});
  CHECK(plain->get("a/k") == Bytes{1});
  CHECK_FALSE(plain->check("k"));
  CHECK(a->check("k"));
  CHECK(a->add("n", 5) == 5);
  CHECK(b->add("n", 1) == 1);
  CHECK(plain->add("a/n", 0) == 5);
  a->wait({"k", "n"});
  auto [code, message] = error_of([&] { b->get("missing", 50ms); });
  CHECK(code == Errc::timeout);
  CHECK_THAT(message, Contains("'b/missing'"));

  // Two worlds of two ranks each run a barrier and an all_gather of the same names at once.
  std::vector<std::future<std::vector<Bytes>>> ranks;
  for (int world = 0; world < 2; ++world) {
    for (int rank = 0; rank < 2; ++rank) {
      ranks.push_back(std::async(std::launch::async, [&, world, rank] {
        auto store = client("w" + std::to_string(world) + "/");
        std::vector<Bytes> last;
        for (int round = 0; round < 3; ++round) {
          store->barrier("b", rank, 2);
          last = store->all_gather("g", rank, 2,
                                   Bytes{static_cast<std::uint8_t>(world), static_cast<std::uint8_t>(rank),
                                         static_cast<std::uint8_t>(round)});
        }
        return last;
      }));
    }
  }
  for (int i = 0; i < 4; ++i) {
    const auto world = static_cast<std::uint8_t>(i / 2);
    CHECK(ranks[i].get() == std::vector<Bytes>{Bytes{world, 0, 2}, Bytes{world, 1, 2}});
  }
  // A barrier with a world's own name but the other prefix would need two more arrivals: it times out.
  auto [late_code, late_message] = error_of([&] { client("w2/")->barrier("b", 0, 2, 100ms); });
  CHECK(late_code == Errc::timeout);
  CHECK_THAT(late_message, Contains("'w2/b"));
}
