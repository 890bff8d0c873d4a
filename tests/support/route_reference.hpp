// DeepSeek-V3's node-limited top-k selection written the slow, obvious way, independent of the sorting in the
// code under test (the runtime's node_limited_gate and the model's route_select): argmax loops with a strict
// '>' so that the lowest index wins every tie.
#pragma once

#include <algorithm>
#include <functional>
#include <vector>

namespace ferry::test {

// `biased`: one token's selection scores (score + bias) of all experts, in groups of experts.size() / groups
// contiguous experts. A group scores the sum of its `per_group` best selection scores (added in descending
// order); the `max_groups` best groups are kept and the `topk` best experts inside them returned, best first.
template <typename T>
std::vector<int> reference_route(const std::vector<T>& biased, int groups, int max_groups, int topk,
                                 int per_group) {
  const int experts = static_cast<int>(biased.size());
  const int group_size = experts / groups;
  std::vector<T> group_score(groups, T(0));
  for (int g = 0; g < groups; ++g) {
    std::vector<T> members(biased.begin() + g * group_size, biased.begin() + (g + 1) * group_size);
    std::sort(members.begin(), members.end(), std::greater<>());
    for (int j = 0; j < per_group; ++j) group_score[g] += members[j];
  }
  std::vector<bool> group_kept(groups, false);
  for (int m = 0; m < max_groups; ++m) {
    int best = -1;
    for (int g = 0; g < groups; ++g)
      if (!group_kept[g] && (best < 0 || group_score[g] > group_score[best])) best = g;
    group_kept[best] = true;
  }
  std::vector<bool> taken(experts, false);
  std::vector<int> chosen;
  for (int k = 0; k < topk; ++k) {
    int best = -1;
    for (int e = 0; e < experts; ++e)
      if (group_kept[e / group_size] && !taken[e] && (best < 0 || biased[e] > biased[best])) best = e;
    taken[best] = true;
    chosen.push_back(best);
  }
  return chosen;
}

}  // namespace ferry::test
