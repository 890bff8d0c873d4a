// All pairs of a set of endpoints in rounds, so that in every round each endpoint talks to one peer at most:
// the round-robin tournament ("circle method"). With n endpoints (n even) there are n - 1 rounds of n / 2
// pairs; with n odd, n rounds in which one endpoint sits out. Every unordered pair meets exactly once.
//
// `ferry probe fabric` runs one round at a time, both directions of every pair at once, so a link is measured
// while each node sends to one peer and receives from one peer: what its NIC and cable give, not how it
// shares them.
#pragma once

#include <utility>
#include <vector>

namespace ferry::tools::probe {

using Pair = std::pair<int, int>;  // (a, b) with a < b
using Round = std::vector<Pair>;

// Throws Errc::invalid_argument when n < 2.
std::vector<Round> round_robin_rounds(int n);

}  // namespace ferry::tools::probe
