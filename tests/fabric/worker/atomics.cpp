// Atomics under contention: every rank hammers two counters on rank 0.
#include <algorithm>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "scenarios.hpp"

namespace fabric_worker {

void atomics(const Context& context) {
  using ferry::transport::MemoryKind;
  const int rank = context.rank();
  const int world = context.world();
  const int adds = context.rounds > 0 ? context.rounds : 1000;
  const int fetches = std::max(1, adds / 4);

  auto fabric = context.make_fabric();
  auto counters =
      fabric->register_region(nullptr, 16, MemoryKind::host);  // [0] add target, [1] fetch_add target
  fabric->connect();

  // Interleave the two kinds in a random order so that adds and fetches from all ranks meet on the target.
  std::vector<bool> order(adds + fetches, false);
  std::fill(order.begin(), order.begin() + fetches, true);
  std::mt19937_64 random(context.seed + rank);
  std::shuffle(order.begin(), order.end(), random);
  std::vector<std::uint64_t> fetched;
  for (bool fetch : order) {
    if (fetch) {
      fetched.push_back(fabric->fetch_add(0, counters, 8, 1));
    } else {
      fabric->atomic_add(0, counters, 0, std::uint64_t(rank) + 1);
      fabric->progress();
    }
  }
  fabric->flush();
  ferry::transport::fabric_barrier(*fabric, context.peers, "atomics/done");

  std::vector<std::uint8_t> mine(fetched.size() * 8);
  std::memcpy(mine.data(), fetched.data(), mine.size());
  auto all = context.group->all_gather("fabric_worker/atomics/fetched", mine);
  if (rank == 0) {
    auto* words = static_cast<std::uint64_t*>(fabric->region_base(counters));
    std::uint64_t want_sum = std::uint64_t(adds) * std::uint64_t(world) * std::uint64_t(world + 1) / 2;
    if (words[0] != want_sum) {
      throw ScenarioFailure("atomic_add counter on rank 0 is " + std::to_string(words[0]) + ", expected " +
                            std::to_string(want_sum) + " (" + std::to_string(world) + " ranks x " +
                            std::to_string(adds) + " adds of rank+1)");
    }
    std::uint64_t total = std::uint64_t(fetches) * world;
    if (words[1] != total) {
      throw ScenarioFailure("fetch_add counter on rank 0 is " + std::to_string(words[1]) + ", expected " +
                            std::to_string(total));
    }
    std::vector<std::uint64_t> values;
    for (const auto& blob : all) {
      for (std::size_t i = 0; i + 8 <= blob.size(); i += 8) {
        std::uint64_t value;
        std::memcpy(&value, blob.data() + i, 8);
        values.push_back(value);
      }
    }
    std::sort(values.begin(), values.end());
    for (std::uint64_t i = 0; i < values.size(); ++i) {
      if (values[i] != i) {
        throw ScenarioFailure("fetch_add results are not the distinct values 0.." +
                              std::to_string(total - 1) + ": sorted position " + std::to_string(i) +
                              " holds " + std::to_string(values[i]));
      }
    }
    std::printf("rank 0: counter %llu = %d ranks x %d adds exact; %llu fetch_add results distinct\n",
                static_cast<unsigned long long>(words[0]), world, adds,
                static_cast<unsigned long long>(total));
  }
  ferry::transport::fabric_barrier(*fabric, context.peers, "atomics/checked");
}

}  // namespace fabric_worker
