// Data parallelism for the dense parameters of an expert-parallel run.
//
// Each rank trains on its own micro-batch and holds the gradients of its own experts only (the others' stay
// zero). reduce_step() turns this rank's step into the step a single process would take on the concatenated
// batch: dense gradients are summed over the ranks, every gradient is divided by the rank count (each rank's
// loss is a mean over its own tokens), losses are averaged, expert loads summed, and the global gradient
// norm counts each dense parameter once and every expert once. Every sum runs in rank order, in double, so
// all ranks get the same bits on every run.
#pragma once

#include <memory>
#include <span>
#include <vector>

#include "ferry/group.hpp"
#include "ferry/model/balance.hpp"
#include "ferry/model/model.hpp"
#include "ferry/model/params.hpp"

namespace ferry::model {

// Element-wise sums over the ranks of a run.
class Collective {
 public:
  virtual ~Collective() = default;
  virtual int rank() const = 0;
  virtual int size() const = 0;
  // values ← Σ over ranks of values, added in rank order: the same result on every rank.
  virtual void sum(std::span<double> values) = 0;
};

// Sums over a ferry::Group's bootstrap store (all_gather of byte strings): slow, but deterministic and
// plenty for the small models the CPU trainer runs. The group must outlive it.
class GroupCollective final : public Collective {
 public:
  explicit GroupCollective(Group& group) : group_(group) {}
  int rank() const override { return group_.rank(); }
  int size() const override { return group_.world_size(); }
  void sum(std::span<double> values) override;

 private:
  Group& group_;
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
