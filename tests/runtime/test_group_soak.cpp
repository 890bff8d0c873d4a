// Soak: thousands of Group barriers and all-gathers leave rank 0's store where it was. Without round
// lifetimes every round would leave world + 3 keys behind; here what the store holds stays within a couple
// of rounds' worth however long the job runs.
#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdio>
#include <string>
#include <vector>

#include "common/thread_check.hpp"
#include "ferry/group.hpp"
#include "ferry/transport/store.hpp"
#include "group_test_support.hpp"

using namespace group_test;

TEST_CASE("group soak: thousands of barriers and all-gathers keep rank 0's store flat", "[group][soak]") {
  constexpr int kWorld = 4;
  constexpr int kRounds = 1000;  // each a barrier and an all-gather: 2000 collectives
  constexpr int kSampleEvery = 100;
  constexpr std::size_t kValueBytes = 64;
  std::vector<ferry::transport::StoreStats> samples;
  const auto start = std::chrono::steady_clock::now();
  run_ranks(
      kWorld, 2,
      [&](ferry::Group& group) {
        std::vector<std::uint8_t> mine(kValueBytes);
        for (int round = 0; round < kRounds; ++round) {
          group.barrier("soak");
          std::fill(mine.begin(), mine.end(), static_cast<std::uint8_t>(group.rank() * 31 + round));
          auto all = group.all_gather("soak/values", mine);
          for (int r = 0; r < kWorld; ++r) {
            ferry::test::expect(
                all[r] == std::vector<std::uint8_t>(kValueBytes, static_cast<std::uint8_t>(r * 31 + round)),
                "round " + std::to_string(round) + ": wrong bytes from rank " + std::to_string(r));
          }
          if (group.rank() == 0 && round % kSampleEvery == 0) samples.push_back(group.store().server_stats());
        }
      },
      120s);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();

  REQUIRE(samples.size() == kRounds / kSampleEvery);
  std::uint64_t max_keys = 0, max_bytes = 0;
  for (const auto& sample : samples) {
    max_keys = std::max(max_keys, sample.keys);
    max_bytes = std::max(max_bytes, sample.bytes);
  }
  std::printf(
      "group soak: %d barrier + all-gather rounds on %d ranks in %.2f s; rank 0's store held "
      "%llu keys / %llu bytes after round 0 and %llu keys / %llu bytes after round %d (max %llu / %llu)\n",
      kRounds, kWorld, seconds, static_cast<unsigned long long>(samples.front().keys),
      static_cast<unsigned long long>(samples.front().bytes),
      static_cast<unsigned long long>(samples.back().keys),
      static_cast<unsigned long long>(samples.back().bytes), kRounds - kSampleEvery,
      static_cast<unsigned long long>(max_keys), static_cast<unsigned long long>(max_bytes));
  // At a sample, the slowest rank may still be finishing the previous collective and the fastest may have
  // started the next: at most a few rounds' keys are alive, never a thousand rounds' worth.
  constexpr std::uint64_t kKeysPerRound = kWorld + 3;
  CHECK(max_keys <= 3 * kKeysPerRound + 8);
  CHECK(max_bytes <= 3 * kWorld * (kValueBytes + 64) + 1024);
}
