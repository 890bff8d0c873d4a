// The job's failure as the store knows it: ranks join their group; a rank claimed twice, world sizes that
// disagree, a member whose connection closes before it leaves, or a rank's report fail the job; from then on
// every wait on the store ends at once naming the cause, and a StoreWatch tells those not talking to it.
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "bootstrap/store_members.hpp"
#include "store_test_support.hpp"

using namespace store_test;
using ferry::transport::Membership;
using ferry::transport::StoreWatch;

namespace {

// Waits (bounded) until `watch` has a failure and returns it.
std::string await_failure(const StoreWatch& watch, std::chrono::milliseconds limit = 3000ms) {
  const auto deadline = Clock::now() + limit;
  while (watch.failure().empty() && Clock::now() < deadline) std::this_thread::sleep_for(2ms);
  return watch.failure();
}

}  // namespace

TEST_CASE("store failure: membership counts who is present and fails the job on a lost member",
          "[store][failure]") {
  Membership members;
  Membership::Seat a, b, c;
  CHECK(members.join("", 0, 3, "pid 1 on h", a).empty());
  CHECK(members.join("", 1, 3, "pid 2 on h", b).empty());
  CHECK(members.present("") == 2);
  CHECK_THAT(members.join("", 2, 3, "pid 3", a), Catch::Contains("already joined as rank 0"));
  CHECK_THAT(members.join("", 3, 3, "pid 3", c), Catch::Contains("outside the world of 3"));
  CHECK_FALSE(members.failed());
  members.leave(a);
  CHECK(members.present("") == 1);
  CHECK_FALSE(members.lost(a, "closed").counted);  // left first: closing is no failure
  const Membership::Loss loss = members.lost(b, "its connection closed");
  CHECK(loss.counted);
  CHECK(loss.job_failed);
  CHECK(loss.rank == 1);
  CHECK(loss.index == 1);
  CHECK(loss.group.empty());
  CHECK(members.failure() == "rank 1 (pid 2 on h) is gone: its connection closed");
  CHECK_FALSE(members.fail("a later report"));
  CHECK(members.failure() == "rank 1 (pid 2 on h) is gone: its connection closed");
  // Once failed, nobody joins.
  CHECK(members.join("", 2, 3, "pid 3", c) == members.failure());

  // A group whose ranks have all departed is forgotten.
  Membership other;
  Membership::Seat x, y;
  CHECK(other.join("sub/", 0, 2, "", x).empty());
  CHECK(other.join("sub/", 1, 2, "", y).empty());
  CHECK(other.groups() == 1);
  other.leave(x);
  other.leave(y);
  CHECK(other.groups() == 0);
}

TEST_CASE("store failure: a rank claimed twice fails every rank at once, naming it", "[store][failure]") {
  StoreServer server(server_options(20000ms));
  Store rank0(client_options(server, 20000ms));
  Store first(client_options(server, 20000ms));
  Store second(client_options(server, 20000ms));
  rank0.join("", 0, 2, "pid 100 on a");
  first.join("", 1, 2, "pid 101 on a");
  // Rank 0 waits for something rank 1 will never send; the impostor's claim ends the wait at once.
  std::thread waiter([&] {
    auto start = Clock::now();
    auto error = expect_error([&] { rank0.get("never-set", 20s); });
    CHECK(error.code() == Errc::peer_failure);
    CHECK_THAT(error.what(),
               Catch::Contains("rank 1 is claimed twice: by pid 101 on a (joined first) and by pid "
                               "102 on b"));
    CHECK(seconds_since(start) < 5.0);
  });
  std::this_thread::sleep_for(100ms);
  auto refused = expect_error([&] { second.join("", 1, 2, "pid 102 on b"); });
  waiter.join();
  CHECK(refused.code() == Errc::peer_failure);
  CHECK_THAT(refused.what(), Catch::Contains("rank 1 is claimed twice"));
  // The rank that joined first hears of it too, at its next wait, and the connections stay usable.
  auto told = expect_error([&] { first.barrier("b", 1, 2); });
  CHECK_THAT(told.what(), Catch::Contains("rank 1 is claimed twice"));
  first.leave("");
  bool failed = false;
  CHECK(rank0.members_present("", &failed) == 1);
  CHECK(failed);
}

TEST_CASE("store failure: ranks that disagree on the world size are refused, naming both sizes",
          "[store][failure]") {
  StoreServer server(server_options());
  Store a(client_options(server));
  Store b(client_options(server));
  a.join("", 0, 4, "pid 1");
  auto error = expect_error([&] { b.join("", 3, 5, "pid 2"); });
  CHECK(error.code() == Errc::peer_failure);
  CHECK_THAT(error.what(),
             Catch::Contains("ranks disagree on the world size: rank 0 (pid 1) joined a world of 4 "
                             "ranks, rank 3 (pid 2) a world of 5"));
  CHECK_THAT(expect_error([&] { a.get("x", 10s); }).what(), Catch::Contains("disagree on the world size"));
}

TEST_CASE("store failure: a member whose connection closes before it leaves fails the job at once",
          "[store][failure]") {
  StoreServer server(server_options(20000ms));
  Store survivor(client_options(server, 20000ms));
  survivor.join("", 0, 2, "pid 1 on a");
  StoreWatch watch(client_options(server, 20000ms));
  auto departing = std::make_unique<Store>(client_options(server, 20000ms));
  departing->join("", 1, 2, "pid 2 on b");
  std::thread killer([&] {
    std::this_thread::sleep_for(200ms);
    departing.reset();  // the process "dies": its connection closes without LEAVE
  });
  auto start = Clock::now();
  auto error = expect_error([&] { survivor.barrier("work", 0, 2, 20s); });
  const double waited = seconds_since(start);
  killer.join();
  CHECK(error.code() == Errc::peer_failure);
  CHECK_THAT(error.what(), Catch::Contains("rank 1 (pid 2 on b) is gone: its connection to the store closed "
                                           "before it checked out"));
  CHECK(waited < 0.2 + std::chrono::duration<double>(kSlack).count());
  // The watch heard it too, and says the same.
  CHECK(await_failure(watch) ==
        std::string(error.what()).substr(std::string("ferry: peer failure: ").size()));
  CHECK_THROWS_AS(watch.check(), ferry::Error);
  // Keys that exist are still read; only waits end.
  survivor.set("exists", bytes_of("v"));
  CHECK(survivor.get("exists", 1s) == bytes_of("v"));
}

TEST_CASE("store failure: a member that leaves first closes without failing anyone", "[store][failure]") {
  StoreServer server(server_options());
  Store stays(client_options(server));
  stays.join("", 0, 2, "");
  {
    Store goes(client_options(server));
    goes.join("", 1, 2, "");
    CHECK(stays.members_present("") == 2);
    goes.leave("");
  }
  bool failed = true;
  // Give the server a moment to see the close.
  std::this_thread::sleep_for(50ms);
  CHECK(stays.members_present("", &failed) == 1);
  CHECK_FALSE(failed);
  CHECK_FALSE(stays.check("anything"));
  StoreWatch watch(client_options(server));
  std::this_thread::sleep_for(50ms);
  CHECK(watch.failure().empty());
}

TEST_CASE("store failure: a reported failure reaches every watch, first report wins", "[store][failure]") {
  StoreServer server(server_options());
  StoreWatch one(client_options(server));
  StoreWatch two(client_options(server));
  CHECK(one.failure().empty());
  one.report("rank 3 timed out waiting for rank 2");
  CHECK(await_failure(two) == "rank 3 timed out waiting for rank 2");
  CHECK(await_failure(one) == "rank 3 timed out waiting for rank 2");
  two.report("a second opinion");
  Store late(client_options(server));
  auto error = expect_error([&] { late.get("k", 1s); });
  CHECK_THAT(error.what(), Catch::Contains("rank 3 timed out waiting for rank 2"));
  auto join_error = expect_error([&] { late.join("", 0, 1, ""); });
  CHECK_THAT(join_error.what(), Catch::Contains("rank 3 timed out waiting for rank 2"));
}

TEST_CASE("store failure: a watch whose store goes away says so, naming rank 0, and stopping it is prompt",
          "[store][failure]") {
  auto server = std::make_unique<StoreServer>(server_options());
  StoreWatch watch(client_options(*server));
  server.reset();
  CHECK_THAT(await_failure(watch), Catch::Contains("lost the job's store") && Catch::Contains("rank 0"));
  // A watch on a healthy store stops at once.
  StoreServer healthy(server_options());
  auto start = Clock::now();
  { StoreWatch quick(client_options(healthy)); }
  CHECK(seconds_since(start) < 1.0);
}

namespace {

// Waits (bounded) until `watch` names `count` lost ranks and returns them.
std::vector<int> await_lost(const StoreWatch& watch, std::size_t count,
                            std::chrono::milliseconds limit = 3000ms) {
  const auto deadline = Clock::now() + limit;
  while (watch.lost_ranks().size() < count && Clock::now() < deadline) std::this_thread::sleep_for(2ms);
  return watch.lost_ranks();
}

}  // namespace

// A job that goes on without its dead ranks (the low-latency mode) learns each of them, not only the first.
TEST_CASE(
    "store failure: a watch with the world size follows every rank lost, in order, not the ones that left",
    "[store][failure]") {
  StoreServer server(server_options(20000ms));
  Store survivor(client_options(server, 20000ms));
  survivor.join("", 0, 4, "pid 1 on a");
  StoreWatch watch(client_options(server, 20000ms), 4);
  StoreWatch without_world(client_options(server, 20000ms));
  CHECK(without_world.lost_words() == nullptr);
  const std::uint64_t* words = watch.lost_words();
  REQUIRE(words != nullptr);
  std::vector<std::unique_ptr<Store>> others;
  for (int rank = 1; rank < 4; ++rank) {
    others.push_back(std::make_unique<Store>(client_options(server, 20000ms)));
    others.back()->join("", rank, 4, "pid " + std::to_string(rank + 1) + " on b");
  }
  // Rank 2 checks out first: its closing is no loss. Then rank 3 and rank 1 die, in that order, apart.
  others[1]->leave("");
  others[1].reset();
  others[2].reset();
  CHECK(await_lost(watch, 1) == std::vector<int>{3});
  CHECK_THAT(await_failure(watch), Catch::Contains("rank 3 (pid 4 on b) is gone"));
  others[0].reset();
  CHECK(await_lost(watch, 2) == std::vector<int>{3, 1});
  CHECK(std::atomic_ref<const std::uint64_t>(words[1]).load(std::memory_order_acquire) == 1);
  CHECK(std::atomic_ref<const std::uint64_t>(words[2]).load(std::memory_order_acquire) == 0);
  CHECK(std::atomic_ref<const std::uint64_t>(words[3]).load(std::memory_order_acquire) == 1);
  CHECK(std::atomic_ref<const std::uint64_t>(words[0]).load(std::memory_order_acquire) == 0);
  // Nothing more arrives, and stopping a watch while it waits for a next one is prompt.
  std::this_thread::sleep_for(50ms);
  CHECK(watch.lost_ranks().size() == 2);
  CHECK(without_world.lost_ranks().empty());
  auto second = std::make_unique<StoreWatch>(client_options(server, 20000ms), 4);
  CHECK(await_lost(*second, 2) == std::vector<int>{3, 1});  // a watch made later reads them all
  const auto start = Clock::now();
  second.reset();
  CHECK(seconds_since(start) < 1.0);
}

TEST_CASE("store failure: a watch that loses the store counts rank 0, its host, as lost",
          "[store][failure]") {
  auto server = std::make_unique<StoreServer>(server_options());
  StoreWatch watch(client_options(*server), 3);
  server.reset();
  CHECK(await_lost(watch, 1) == std::vector<int>{0});
  CHECK_THAT(watch.failure(), Catch::Contains("lost the job's store"));
}

// A sub-group's members are numbered as its own ranks under its key prefix: a watch on that prefix follows
// its lost ranks in that numbering (the low-latency mode on a sub-group masks them), apart from the job's.
TEST_CASE("store failure: a watch on a sub-group's prefix follows its lost ranks in its numbering",
          "[store][failure]") {
  const std::string sub = "ferry/split/ep/0/abc/";
  StoreServer server(server_options(20000ms));
  std::vector<std::unique_ptr<Store>> job;
  for (int rank = 0; rank < 3; ++rank) {
    job.push_back(std::make_unique<Store>(client_options(server, 20000ms)));
    job.back()->join("", rank, 3, "pid " + std::to_string(rank + 1) + " on a");
  }
  // Job ranks 1 and 2 form the sub-group, as its ranks 0 and 1; the store's host (job rank 0) is not in it.
  StoreOptions sub_options = client_options(server, 20000ms);
  sub_options.key_prefix = sub;
  std::vector<std::unique_ptr<Store>> members;
  for (int rank = 0; rank < 2; ++rank) {
    members.push_back(std::make_unique<Store>(sub_options));
    members.back()->join(sub, rank, 2, "pid " + std::to_string(rank + 2) + " on a");
  }
  StoreWatch job_watch(client_options(server, 20000ms), 3);
  StoreWatch sub_watch(sub_options, 2, -1);
  // Job rank 2, the sub-group's rank 1, dies: both of its connections close.
  members[1].reset();
  job[2].reset();
  CHECK(await_lost(sub_watch, 1) == std::vector<int>{1});
  CHECK(await_lost(job_watch, 1) == std::vector<int>{2});
  const std::uint64_t* words = sub_watch.lost_words();
  CHECK(std::atomic_ref<const std::uint64_t>(words[0]).load(std::memory_order_acquire) == 0);
  CHECK(std::atomic_ref<const std::uint64_t>(words[1]).load(std::memory_order_acquire) == 1);
  CHECK(sub_watch.world_size() == 2);
}

TEST_CASE("store failure: a watch that loses the store marks its group's rank that hosted it, or nobody",
          "[store][failure]") {
  auto server = std::make_unique<StoreServer>(server_options());
  StoreWatch hosted_by_1(client_options(*server), 3, 1);  // a sub-group whose rank 1 is the job's rank 0
  StoreWatch not_hosted(client_options(*server), 3, -1);
  server.reset();
  CHECK(await_lost(hosted_by_1, 1) == std::vector<int>{1});
  CHECK_THAT(await_failure(not_hosted), Catch::Contains("lost the job's store"));
  CHECK(not_hosted.lost_ranks().empty());  // a watch marks the host before it sets the failure
}

TEST_CASE("store failure: the lost ranks' keys are the store's own: clients read them but cannot write them",
          "[store][failure]") {
  StoreServer server(server_options(20000ms));
  Store client(client_options(server, 20000ms));
  auto set_error = expect_error([&] { client.set("ferry/store/lost/1", bytes_of("0")); });
  CHECK(set_error.code() == Errc::invalid_argument);
  CHECK_THAT(set_error.what(), Catch::Contains("the store's own"));
  auto add_error = expect_error([&] { client.add("ferry/store/lost/2", 1); });
  CHECK_THAT(add_error.what(), Catch::Contains("the store's own"));
  // A sub-group's (its prefix ends with '/') are reserved too; keys that merely contain the words are not.
  auto sub_error = expect_error([&] { client.set("sub/ab12/ferry/store/lost/1", bytes_of("0")); });
  CHECK_THAT(sub_error.what(), Catch::Contains("the store's own"));
  client.set("ferry/store/lost/x", bytes_of("ok"));
  CHECK(client.get("ferry/store/lost/x", 1s) == bytes_of("ok"));
  client.set("results_ferry/store/lost/3", bytes_of("ok"));
  CHECK(client.get("results_ferry/store/lost/3", 1s) == bytes_of("ok"));
  // A member dies: the store publishes it as lost rank 1, and the job has failed.
  Store member(client_options(server, 20000ms));
  member.join("", 0, 2, "pid 1");
  auto doomed = std::make_unique<Store>(client_options(server, 20000ms));
  doomed->join("", 1, 2, "pid 2");
  doomed.reset();
  CHECK(client.get("ferry/store/lost/1", 3s) == bytes_of("1"));
  // ERASE leaves the lost ranks (a watch may not have read them yet) and takes the rest.
  CHECK(client.erase_prefix("ferry/store/") == 1);
  CHECK(client.get("ferry/store/lost/1", 1s) == bytes_of("1"));
  // After the job failed, a GET of a lost rank's key still waits (the store itself sets it) while others end.
  auto start = Clock::now();
  CHECK_THROWS_AS(member.get("never-set", 5s), ferry::Error);
  CHECK(seconds_since(start) < 1.0);
  start = Clock::now();
  auto timeout = expect_error([&] { member.get("ferry/store/lost/2", 300ms); });
  CHECK(timeout.code() == Errc::timeout);
  CHECK(seconds_since(start) >= 0.25);
}
