#include "ferry/model/distributed.hpp"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>

#include "ferry/core/error.hpp"

namespace ferry::model {

void GroupCollective::sum(std::span<double> values) {
  std::vector<std::uint8_t> mine(values.size_bytes());
  std::memcpy(mine.data(), values.data(), mine.size());
  const auto all = group_.all_gather("ferry.model.sum", mine);
  std::vector<double> total(values.size(), 0.0), theirs(values.size());
  for (std::size_t r = 0; r < all.size(); ++r) {  // rank order: the same additions on every rank
    if (all[r].size() != mine.size())
      fail(Errc::internal, "collective sum: rank " + std::to_string(r) + " sent " +
                               std::to_string(all[r].size() / sizeof(double)) + " values, rank " +
                               std::to_string(rank()) + " " + std::to_string(values.size()));
    std::memcpy(theirs.data(), all[r].data(), mine.size());
    for (std::size_t i = 0; i < total.size(); ++i) total[i] += theirs[i];
  }
  std::copy(total.begin(), total.end(), values.begin());
}

bool is_expert_param(const ParamInfo& info) {
  const auto ends_with = [&](const std::string& suffix) {
    return info.name.size() >= suffix.size() &&
           info.name.compare(info.name.size() - suffix.size(), suffix.size(), suffix) == 0;
  };
  return ends_with(".moe.experts.w13") || ends_with(".moe.experts.w2");
}

void append_rank_slots(std::vector<double>& packed, int rank, int ranks, double value) {
  for (int r = 0; r < ranks; ++r) packed.push_back(r == rank ? value : 0.0);
}

double max_of_rank_slots(std::span<const double> packed, std::size_t at, int ranks) {
  double largest = packed[at];
  for (int r = 1; r < ranks; ++r) largest = std::max(largest, packed[at + r]);
  return largest;
}

ReducedStep reduce_step(Collective& collective, ParamStore<float>& params, const LossParts& losses,
                        const std::vector<ExpertLoad>& loads, std::size_t activation_peak_bytes) {
  const double ranks = collective.size();
  const float inv_ranks = static_cast<float>(1.0 / ranks);
  auto grads = params.grads();

  // One round carries everything: [losses (4) | expert sum of squares (1) | loads | activation peak per rank
  // | dense gradients].
  std::vector<double> packed{losses.total, losses.main, losses.mtp, losses.balance, 0.0};
  double expert_sq = 0;
  for (const ParamInfo& info : params.info()) {
    if (!is_expert_param(info)) continue;
    for (std::size_t i = info.offset; i < info.offset + info.size; ++i) {
      grads[i] *= inv_ranks;
      expert_sq += static_cast<double>(grads[i]) * grads[i];
    }
  }
  packed[4] = expert_sq;
  for (const ExpertLoad& load : loads)
    for (std::int64_t c : load.counts) packed.push_back(static_cast<double>(c));
  const std::size_t peaks_start = packed.size();
  append_rank_slots(packed, collective.rank(), collective.size(), static_cast<double>(activation_peak_bytes));
  const std::size_t dense_start = packed.size();
  for (const ParamInfo& info : params.info()) {
    if (is_expert_param(info)) continue;
    for (std::size_t i = info.offset; i < info.offset + info.size; ++i) packed.push_back(grads[i]);
  }

  collective.sum(packed);

  ReducedStep reduced;
  reduced.losses = {packed[0] / ranks, packed[1] / ranks, packed[2] / ranks, packed[3] / ranks};
  std::size_t at = 5;
  for (const ExpertLoad& load : loads) {
    ExpertLoad total;
    for (std::size_t e = 0; e < load.counts.size(); ++e)
      total.counts.push_back(static_cast<std::int64_t>(packed[at++]));
    reduced.loads.push_back(std::move(total));
  }
  reduced.activation_peak_bytes =
      static_cast<std::size_t>(max_of_rank_slots(packed, peaks_start, collective.size()));
  double dense_sq = 0;
  at = dense_start;
  for (const ParamInfo& info : params.info()) {
    if (is_expert_param(info)) continue;
    for (std::size_t i = info.offset; i < info.offset + info.size; ++i) {
      grads[i] = static_cast<float>(packed[at++] / ranks);
      dense_sq += static_cast<double>(grads[i]) * grads[i];
    }
  }
  reduced.grad_norm = std::sqrt(dense_sq + packed[4]);
  return reduced;
}

}  // namespace ferry::model
