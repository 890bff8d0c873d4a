// The schedule simulator: replays each rank's op list with fixed costs and zero transfer time.
#include <algorithm>
#include <cmath>
#include <string>
#include <utility>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/model/pipeline/schedule.hpp"

namespace ferry::model::pipeline {
namespace {

std::string describe(const Op& op) {
  auto work = [](const Work& w) {
    return "micro_batch " + std::to_string(w.micro_batch) + ", chunk " + std::to_string(w.chunk);
  };
  std::string text = to_string(op.kind);
  if (op.kind == OpKind::F) return text + "(" + work(op.f) + ")";
  if (op.kind == OpKind::FB) return text + "(f: " + work(op.f) + "; b: " + work(op.b) + ")";
  return text + "(" + work(op.b) + ")";
}

constexpr double kNotYet = -1;  // finish time of something that has not run

enum class Backward { none, split, full };

// Completion times of every (micro-batch, stage). Ops fill them in; later ops read them as inputs.
struct Progress {
  int stages = 0;
  std::vector<double> forward;   // F done
  std::vector<double> backward;  // input gradient done (B, BW or the b of FB)
  std::vector<Backward> backward_kind;
  std::vector<double> weight;  // W done (split backwards only)

  Progress(int micro_batches, int num_stages)
      : stages(num_stages),
        forward(static_cast<std::size_t>(micro_batches) * num_stages, kNotYet),
        backward(forward.size(), kNotYet),
        backward_kind(forward.size(), Backward::none),
        weight(forward.size(), kNotYet) {}
  std::size_t at(int micro_batch, int stage) const {
    return static_cast<std::size_t>(micro_batch) * stages + stage;
  }
};

class Simulator {
 public:
  Simulator(const ScheduleShape& shape, const std::vector<std::vector<Op>>& per_rank, const OpCosts& costs)
      : shape_(shape),
        ops_(per_rank),
        costs_(costs),
        stages_(num_stages(shape)),
        progress_(shape.micro_batches, stages_) {}

  Simulation run() {
    const int ranks = shape_.ranks;
    std::vector<std::size_t> next(ranks, 0);
    std::vector<double> free_at(ranks, 0);
    Simulation sim;
    sim.busy.assign(ranks, 0);
    std::size_t left = 0;
    for (const auto& list : ops_) left += list.size();

    // A rank runs its next op once every input exists. Finish times never change once set, so the order in
    // which ranks are visited does not affect the result; a sweep that moves no rank is a deadlock.
    while (left > 0) {
      bool moved = false;
      for (int r = 0; r < ranks; ++r) {
        while (next[r] < ops_[r].size()) {
          const Op& op = ops_[r][next[r]];
          const double ready = inputs_ready(r, next[r], op);
          if (ready == kNotYet) break;
          const double start = std::max(ready, free_at[r]);
          const double cost = cost_of(op);
          free_at[r] = start + cost;
          sim.busy[r] += cost;
          complete(r, next[r], op, free_at[r]);
          ++next[r];
          --left;
          moved = true;
        }
      }
      if (!moved) report_deadlock(next);
    }

    check_everything_ran();
    for (int r = 0; r < ranks; ++r) sim.makespan = std::max(sim.makespan, free_at[r]);
    sim.bubble.resize(ranks);
    for (int r = 0; r < ranks; ++r) sim.bubble[r] = sim.makespan - sim.busy[r];
    return sim;
  }

 private:
  std::string prefix() const {
    return "simulate " + std::string(to_string(shape_.kind)) + " (ranks " + std::to_string(shape_.ranks) +
           ", micro_batches " + std::to_string(shape_.micro_batches) + "): ";
  }
  static std::string op_text(int rank, std::size_t index, const Op& op) {
    return "rank " + std::to_string(rank) + " op " + std::to_string(index) + " " + describe(op);
  }
  std::string where(int rank, std::size_t index, const Op& op) const {
    return prefix() + op_text(rank, index, op);
  }

  // The stage a Work runs, after checking it names a real micro-batch and chunk and sits where place_of()
  // puts it (a schedule that disagrees with place_of would route activations to the wrong rank).
  int stage_checked(int rank, std::size_t index, const Op& op, const Work& work) const {
    if (work.micro_batch < 0 || work.micro_batch >= shape_.micro_batches)
      fail(Errc::invalid_argument, where(rank, index, op) + ": micro_batch is out of range [0, " +
                                       std::to_string(shape_.micro_batches) + ")");
    if (work.chunk < 0 || work.chunk >= chunks_per_rank(shape_))
      fail(Errc::invalid_argument, where(rank, index, op) + ": chunk is out of range [0, " +
                                       std::to_string(chunks_per_rank(shape_)) + ")");
    const int stage = stage_of(shape_, rank, work.chunk);
    const Place place = place_of(shape_, stage, work.micro_batch);
    if (place.rank != rank || place.chunk != work.chunk)
      fail(Errc::invalid_argument, where(rank, index, op) + ": stage " + std::to_string(stage) +
                                       " of that micro-batch belongs to rank " + std::to_string(place.rank) +
                                       " chunk " + std::to_string(place.chunk));
    return stage;
  }

  double cost_of(const Op& op) const {
    switch (op.kind) {
      case OpKind::F:
        return costs_.F;
      case OpKind::B:
        return costs_.B;
      case OpKind::W:
        return costs_.W;
      case OpKind::BW:
        return costs_.B + costs_.W;
      case OpKind::FB:
        return costs_.FB;
    }
    return 0;
  }

  // When the inputs of a forward / backward of `work` exist, or kNotYet.
  double forward_ready(int stage, const Work& work) const {
    return stage == 0 ? 0 : progress_.forward[progress_.at(work.micro_batch, stage - 1)];
  }
  double backward_ready(int stage, const Work& work) const {
    const double f = progress_.forward[progress_.at(work.micro_batch, stage)];
    if (f == kNotYet) return kNotYet;
    if (stage == stages_ - 1) return f;
    const double b = progress_.backward[progress_.at(work.micro_batch, stage + 1)];
    return b == kNotYet ? kNotYet : std::max(f, b);
  }

  double inputs_ready(int rank, std::size_t index, const Op& op) const {
    switch (op.kind) {
      case OpKind::F:
        return forward_ready(stage_checked(rank, index, op, op.f), op.f);
      case OpKind::B:
      case OpKind::BW:
        return backward_ready(stage_checked(rank, index, op, op.b), op.b);
      case OpKind::FB: {
        const double f = forward_ready(stage_checked(rank, index, op, op.f), op.f);
        const double b = backward_ready(stage_checked(rank, index, op, op.b), op.b);
        return f == kNotYet || b == kNotYet ? kNotYet : std::max(f, b);
      }
      case OpKind::W: {
        const std::size_t k = progress_.at(op.b.micro_batch, stage_checked(rank, index, op, op.b));
        if (progress_.backward_kind[k] == Backward::full)
          fail(Errc::invalid_argument,
               where(rank, index, op) +
                   ": its backward already ran in full (BW or F&B); there is no W to run");
        return progress_.backward[k];
      }
    }
    fail(Errc::invalid_argument,
         where(rank, index, op) + ": unknown op kind " + std::to_string(static_cast<int>(op.kind)));
  }

  void set_forward(int rank, std::size_t index, const Op& op, double t) {
    const std::size_t k = progress_.at(op.f.micro_batch, stage_of(shape_, rank, op.f.chunk));
    if (progress_.forward[k] != kNotYet)
      fail(Errc::invalid_argument, where(rank, index, op) + ": this forward runs twice");
    progress_.forward[k] = t;
  }
  void set_backward(int rank, std::size_t index, const Op& op, double t, Backward kind) {
    const std::size_t k = progress_.at(op.b.micro_batch, stage_of(shape_, rank, op.b.chunk));
    if (progress_.backward[k] != kNotYet)
      fail(Errc::invalid_argument, where(rank, index, op) + ": this backward runs twice");
    progress_.backward[k] = t;
    progress_.backward_kind[k] = kind;
  }

  void complete(int rank, std::size_t index, const Op& op, double t) {
    switch (op.kind) {
      case OpKind::F:
        set_forward(rank, index, op, t);
        break;
      case OpKind::B:
        set_backward(rank, index, op, t, Backward::split);
        break;
      case OpKind::BW:
        set_backward(rank, index, op, t, Backward::full);
        break;
      case OpKind::FB:
        set_forward(rank, index, op, t);
        set_backward(rank, index, op, t, Backward::full);
        break;
      case OpKind::W: {
        const std::size_t k = progress_.at(op.b.micro_batch, stage_of(shape_, rank, op.b.chunk));
        if (progress_.weight[k] != kNotYet)
          fail(Errc::invalid_argument, where(rank, index, op) + ": this W runs twice");
        progress_.weight[k] = t;
        break;
      }
    }
  }

  // Names every stuck rank and the input its next op waits for.
  [[noreturn]] void report_deadlock(const std::vector<std::size_t>& next) const {
    std::string text;
    for (int r = 0; r < shape_.ranks; ++r) {
      if (next[r] >= ops_[r].size()) continue;
      const Op& op = ops_[r][next[r]];
      if (!text.empty()) text += "; ";
      text += op_text(r, next[r], op);
      std::vector<std::string> waits;
      auto input = [](const char* what, int m, int stage) {
        return std::string(what) + " of (micro_batch " + std::to_string(m) + ", stage " +
               std::to_string(stage) + ")";
      };
      auto missing_forward = [&](const Work& w) {
        const int s = stage_of(shape_, r, w.chunk);
        if (s > 0 && progress_.forward[progress_.at(w.micro_batch, s - 1)] == kNotYet)
          waits.push_back(input("F", w.micro_batch, s - 1));
      };
      auto missing_backward = [&](const Work& w, bool own_b) {
        const int s = stage_of(shape_, r, w.chunk);
        if (own_b) {
          if (progress_.backward[progress_.at(w.micro_batch, s)] == kNotYet)
            waits.push_back(input("B", w.micro_batch, s));
          return;
        }
        if (progress_.forward[progress_.at(w.micro_batch, s)] == kNotYet)
          waits.push_back(input("F", w.micro_batch, s));
        if (s + 1 < stages_ && progress_.backward[progress_.at(w.micro_batch, s + 1)] == kNotYet)
          waits.push_back(input("the backward", w.micro_batch, s + 1));
      };
      if (op.kind == OpKind::F || op.kind == OpKind::FB) missing_forward(op.f);
      if (op.kind == OpKind::B || op.kind == OpKind::BW || op.kind == OpKind::FB)
        missing_backward(op.b, false);
      if (op.kind == OpKind::W) missing_backward(op.b, true);
      text += " waits for ";
      for (std::size_t i = 0; i < waits.size(); ++i) text += (i > 0 ? " and " : "") + waits[i];
    }
    fail(Errc::invalid_argument, prefix() + "the op lists deadlock: " + text);
  }

  void check_everything_ran() const {
    auto name = [&](const char* what, int m, int s) {
      const Place p = place_of(shape_, s, m);
      return prefix() + "rank " + std::to_string(p.rank) + " never runs the " + what + " of (micro_batch " +
             std::to_string(m) + ", stage " + std::to_string(s) + ", chunk " + std::to_string(p.chunk) + ")";
    };
    for (int m = 0; m < shape_.micro_batches; ++m) {
      for (int s = 0; s < stages_; ++s) {
        const std::size_t k = progress_.at(m, s);
        if (progress_.forward[k] == kNotYet) fail(Errc::invalid_argument, name("forward", m, s));
        if (progress_.backward[k] == kNotYet) fail(Errc::invalid_argument, name("backward", m, s));
        if (progress_.backward_kind[k] == Backward::split && progress_.weight[k] == kNotYet)
          fail(Errc::invalid_argument, name("W (its B was split)", m, s));
      }
    }
  }

  const ScheduleShape& shape_;
  const std::vector<std::vector<Op>>& ops_;
  OpCosts costs_;
  int stages_;
  Progress progress_;
};

void check_costs(const OpCosts& costs) {
  for (auto [name, value] : {std::pair{"F", costs.F}, {"B", costs.B}, {"W", costs.W}, {"FB", costs.FB}}) {
    if (!std::isfinite(value) || value < 0)
      fail(Errc::invalid_argument, std::string("simulate: OpCosts.") + name +
                                       " must be finite and >= 0, got " + std::to_string(value));
  }
}

}  // namespace

Simulation simulate(const ScheduleShape& shape, const std::vector<std::vector<Op>>& per_rank,
                    const OpCosts& costs) {
  validate(shape);
  check_costs(costs);
  if (static_cast<int>(per_rank.size()) != shape.ranks)
    fail(Errc::invalid_argument, "simulate: per_rank holds " + std::to_string(per_rank.size()) +
                                     " op lists for " + std::to_string(shape.ranks) + " ranks");
  return Simulator(shape, per_rank, costs).run();
}

Simulation simulate(const ScheduleShape& shape, const OpCosts& costs) {
  validate(shape);
  std::vector<std::vector<Op>> per_rank;
  for (int r = 0; r < shape.ranks; ++r) per_rank.push_back(rank_schedule(shape, r));
  return simulate(shape, per_rank, costs);
}

double published_bubble(const ScheduleShape& shape, const OpCosts& costs) {
  validate(shape);
  // The README's B is a full backward (B + W here) and its PP counts stages.
  const double full_backward = costs.B + costs.W;
  switch (shape.kind) {
    case ScheduleKind::none:
      return 0;
    case ScheduleKind::one_f_one_b:
      return (shape.ranks - 1) * (costs.F + full_backward);
    case ScheduleKind::dualpipe:
      return (shape.ranks / 2.0 - 1) * (costs.FB + full_backward - 3 * costs.W);
    case ScheduleKind::dualpipev:
      return (shape.ranks - 1) * (costs.FB + full_backward - 3 * costs.W);
  }
  return 0;
}

}  // namespace ferry::model::pipeline
