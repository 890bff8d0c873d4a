#include "probe/pair_schedule.hpp"

#include <algorithm>
#include <string>

#include "ferry/core/error.hpp"

namespace ferry::tools::probe {

std::vector<Round> round_robin_rounds(int n) {
  if (n < 2) fail(Errc::invalid_argument, "all pairs need at least 2 endpoints, not " + std::to_string(n));
  // Circle method: m (n rounded up to even) seats in two facing rows, seat i facing seat m - 1 - i; the
  // player in seat 0 stays, the others move one seat on each round. Player n (when n is odd) is the bye.
  const int m = n + (n % 2);
  std::vector<int> seats(static_cast<std::size_t>(m));
  for (int i = 0; i < m; ++i) seats[static_cast<std::size_t>(i)] = i;
  std::vector<Round> rounds;
  for (int r = 0; r < m - 1; ++r) {
    Round round;
    for (int i = 0; i < m / 2; ++i) {
      const int a = seats[static_cast<std::size_t>(i)];
      const int b = seats[static_cast<std::size_t>(m - 1 - i)];
      if (a < n && b < n) round.emplace_back(std::min(a, b), std::max(a, b));
    }
    std::sort(round.begin(), round.end());
    rounds.push_back(std::move(round));
    // Keep seat 0 fixed, rotate the others by one.
    std::rotate(seats.begin() + 1, seats.end() - 1, seats.end());
  }
  return rounds;
}

}  // namespace ferry::tools::probe
