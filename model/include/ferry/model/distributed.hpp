// Data parallelism for the dense parameters of an expert-parallel run.
//
// Each rank trains on its own micro-batch and holds the gradients of its own experts only (the others' stay
// zero). reduce_step() turns this rank's step into the step a single process would take on the concatenated
// batch: dense gradients are summed over the ranks, every gradient is divided by the rank count (each rank's
// loss is a mean over its own tokens), losses are averaged, expert loads summed, and the global gradient
// norm counts each dense parameter once and every expert once. Every sum runs in rank order, in double, so
// all ranks get the same bits on every run. The sums go over the fabric (ChannelCollective), never through
// the bootstrap store: a run's store traffic does not grow with its steps, and dense parameters have no cap.
#pragma once

#include <memory>
#include <span>
#include <string>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/group.hpp"
#include "ferry/model/balance.hpp"
#include "ferry/model/model.hpp"
#include "ferry/model/params.hpp"
#include "ferry/peer_channel.hpp"

namespace ferry::model {

// Collective operations over the ranks of a run.
class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // values ← Σ over ranks of values, added in rank order: the same result on every rank.
  virtual void sum(std::span<double> values) = 0;
  // Every rank's string, indexed by rank.
  virtual std::vector<std::string> all_gather(const std::string& mine) = 0;
};

// values ← scale · Σ over `members` (job ranks, ascending, this rank among them) of values, through the
// channel: a reduce-scatter (member i sums slice i of every member's values, in member order, in double) then
// an all-gather of the summed slices, so every member ends with the same bits while each sends 2 (n-1)/n of
// the vector, not n-1 copies of it. Messages are cut to the channel's max_message_bytes, so any size goes.
// Collective over `members`. T is float or double (a double sum with scale 1 is the plain rank-order sum).
template <typename T>
void sum_over_ranks(ferry::PeerChannel& channel, const std::vector<int>& members, std::span<T> values,
                    double scale = 1.0);

// The collective of a training run: a PeerChannel over the whole job (the fabric, point to point), so that
// per-step traffic never touches the bootstrap store. Construction and destruction are collective; the group
// must outlive it.
class ChannelCollective final : public Collective {
 public:
  // Small messages: a step's gradients are cut into many of them.
  static ferry::PeerChannelConfig default_config(Duration timeout);

  ChannelCollective(Group& group, const ferry::PeerChannelConfig& config);
  int rank() const override { return channel_.rank(); }
  int size() const override { return channel_.world_size(); }
  void sum(std::span<double> values) override;
  std::vector<std::string> all_gather(const std::string& mine) override;

 private:
  ferry::PeerChannel channel_;
  std::vector<int> everyone_;
};

// A maximum through a sum: one slot per rank, only this rank's holding its value, so that a sum over the
// ranks carries every rank's value. append_rank_slots() adds the slots to `packed`; max_of_rank_slots() reads
// them back from the summed vector.
void append_rank_slots(std::vector<double>& packed, int rank, int ranks, double value);
double max_of_rank_slots(std::span<const double> packed, std::size_t at, int ranks);

// Routed-expert tensors ("<prefix>.moe.experts.w13" / ".w2"): their gradients stay on the rank holding them.
bool is_expert_param(const ParamInfo& info);

struct ReducedStep {
  LossParts losses;                       // averaged over ranks
  std::vector<ExpertLoad> loads;          // per MoE layer, summed over ranks
  double grad_norm = 0;                   // global L2 norm of the reduced gradients
  std::size_t activation_peak_bytes = 0;  // the largest over the ranks
};

// Reduces this rank's gradients (in place), losses, loads and activation peak as described above.
// Collective: every rank calls it once per step.
ReducedStep reduce_step(Collective& collective, ParamStore<float>& params, const LossParts& losses,
                        const std::vector<ExpertLoad>& loads, std::size_t activation_peak_bytes);

}  // namespace ferry::model
