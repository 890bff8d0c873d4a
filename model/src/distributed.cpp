#include "ferry/model/distributed.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>

#include "ferry/core/error.hpp"

namespace ferry::model {

namespace {

template <typename T>
std::span<std::byte> bytes_of(T* p, std::size_t n) {
  return {reinterpret_cast<std::byte*>(p), n * sizeof(T)};
}

// Posts the messages that move `bytes` to (send) or from (recv) `peer`, cut to the channel's largest message
// the same way on both sides.
void post_chunks(ferry::PeerChannel& channel, int peer, std::span<std::byte> bytes, bool send,
                 std::vector<ferry::Event>& pending) {
  const std::size_t chunk = channel.config().max_message_bytes;
  for (std::size_t at = 0; at < bytes.size(); at += chunk) {
    const auto piece = bytes.subspan(at, std::min(chunk, bytes.size() - at));
    pending.push_back(send ? channel.send(peer, piece) : channel.recv(peer, piece));
  }
}

void wait_all(std::vector<ferry::Event>& pending) {
  for (const auto& event : pending) event.wait();
  pending.clear();
}

}  // namespace

template <typename T>
void sum_over_ranks(ferry::PeerChannel& channel, const std::vector<int>& members, std::span<T> values,
                    double scale) {
  const int ranks = static_cast<int>(members.size());
  const auto mine = std::find(members.begin(), members.end(), channel.rank());
  if (mine == members.end())
    fail(Errc::internal, "sum_over_ranks: rank " + std::to_string(channel.rank()) + " is not a member");
  const int me = static_cast<int>(mine - members.begin());
  const std::size_t n = values.size();
  const auto begin_of = [&](int i) { return n * i / ranks; };
  const auto size_of = [&](int i) { return begin_of(i + 1) - begin_of(i); };
  const auto slice = [&](T* data, int i) { return bytes_of(data, size_of(i)); };
  std::vector<ferry::Event> pending;

  std::vector<std::vector<T>> theirs(ranks);
  for (int i = 0; i < ranks; ++i) {
    if (i == me) continue;
    theirs[i].resize(size_of(me));
    post_chunks(channel, members[i], bytes_of(theirs[i].data(), size_of(me)), false, pending);
  }
  for (int i = 0; i < ranks; ++i)
    if (i != me) post_chunks(channel, members[i], slice(values.data() + begin_of(i), i), true, pending);
  wait_all(pending);
  const std::size_t first = begin_of(me);
  for (std::size_t k = 0; k < size_of(me); ++k) {
    double sum = 0;
    for (int i = 0; i < ranks; ++i) sum += i == me ? values[first + k] : theirs[i][k];
    values[first + k] = static_cast<T>(sum * scale);
  }
  for (int i = 0; i < ranks; ++i)
    if (i != me) post_chunks(channel, members[i], slice(values.data() + begin_of(i), i), false, pending);
  for (int i = 0; i < ranks; ++i)
    if (i != me) post_chunks(channel, members[i], slice(values.data() + first, me), true, pending);
  wait_all(pending);
}

template void sum_over_ranks<float>(ferry::PeerChannel&, const std::vector<int>&, std::span<float>, double);
template void sum_over_ranks<double>(ferry::PeerChannel&, const std::vector<int>&, std::span<double>, double);

ferry::PeerChannelConfig ChannelCollective::default_config(Duration timeout) {
  ferry::PeerChannelConfig config;
  config.max_message_bytes = std::size_t{256} << 10;
  config.slots_per_peer = 4;
  config.timeout = timeout;
  return config;
}

ChannelCollective::ChannelCollective(Group& group, const ferry::PeerChannelConfig& config)
    : channel_(group, config), everyone_(group.world_size()) {
  for (int r = 0; r < group.world_size(); ++r) everyone_[r] = r;
}

void ChannelCollective::sum(std::span<double> values) {
  sum_over_ranks(channel_, everyone_, values);
}

std::vector<std::string> ChannelCollective::all_gather(const std::string& mine) {
  // The sizes first: a receive must name the exact size of the message it takes.
  const int ranks = size(), me = rank();
  std::vector<std::uint64_t> sizes(ranks);
  std::uint64_t my_size = mine.size();
  std::vector<ferry::Event> pending;
  for (int r = 0; r < ranks; ++r) {
    if (r == me) continue;
    post_chunks(channel_, r, bytes_of(&sizes[r], 1), false, pending);
    post_chunks(channel_, r, bytes_of(&my_size, 1), true, pending);
  }
  wait_all(pending);
  std::vector<std::string> all(ranks);
  std::string outgoing = mine;  // the channel reads it until the sends complete
  for (int r = 0; r < ranks; ++r) {
    if (r == me) continue;
    all[r].resize(sizes[r]);
    post_chunks(channel_, r, bytes_of(all[r].data(), all[r].size()), false, pending);
    post_chunks(channel_, r, bytes_of(outgoing.data(), outgoing.size()), true, pending);
  }
  wait_all(pending);
  all[me] = mine;
  return all;
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
