// Schedule generation: the shapes, the stage <-> (rank, chunk) maps and the per-rank op lists.
#include "ferry/model/pipeline/schedule.hpp"

#include <algorithm>
#include <deque>
#include <string>

#include "ferry/core/error.hpp"

namespace ferry::model::pipeline {
namespace {

[[noreturn]] void bad(const std::string& message) {
  fail(Errc::invalid_argument, message);
}

std::string shape_name(const ScheduleShape& shape) {
  return std::string("pipeline schedule ") + to_string(shape.kind) + " (ranks " +
         std::to_string(shape.ranks) + ", micro_batches " + std::to_string(shape.micro_batches) + ")";
}

// Appends ops to one rank's list and numbers the micro-batches. Both DualPipe variants take each chunk's
// micro-batches strictly in order for forwards and again for backwards, and retire split backwards FIFO,
// so counters and a queue are all the bookkeeping the op lists need.
class Emitter {
 public:
  // first_micro_batch0/1: the global id of chunk 0's / chunk 1's first micro-batch.
  Emitter(std::vector<Op>& ops, int first_micro_batch0, int first_micro_batch1)
      : ops_(ops), first_{first_micro_batch0, first_micro_batch1} {}

  void set_phase(int phase) { phase_ = phase; }

  void f(int chunk) { ops_.push_back(Op{OpKind::F, next_f(chunk), Work{}, phase_}); }
  // split: B now, W later (through w()); otherwise a full backward.
  void b(int chunk, bool split) {
    Work work = next_b(chunk);
    if (split) pending_w_.push_back(work);
    ops_.push_back(Op{split ? OpKind::B : OpKind::BW, Work{}, work, phase_});
  }
  void fb(int f_chunk, int b_chunk) {
    Work f = next_f(f_chunk);
    Work b = next_b(b_chunk);
    ops_.push_back(Op{OpKind::FB, f, b, phase_});
  }
  void w() {
    // The reference asserts a non-empty queue here; our generator's counts make it so.
    ops_.push_back(Op{OpKind::W, Work{}, pending_w_.front(), phase_});
    pending_w_.pop_front();
  }

 private:
  Work next_f(int chunk) { return Work{first_[chunk] + f_count_[chunk]++, chunk}; }
  Work next_b(int chunk) { return Work{first_[chunk] + b_count_[chunk]++, chunk}; }

  std::vector<Op>& ops_;
  int first_[2];
  int f_count_[2] = {0, 0};
  int b_count_[2] = {0, 0};
  std::deque<Work> pending_w_;
  int phase_ = 0;
};

std::vector<Op> single_rank_schedule(const ScheduleShape& shape) {
  std::vector<Op> ops;
  for (int m = 0; m < shape.micro_batches; ++m) {
    ops.push_back(Op{OpKind::F, Work{m, 0}, Work{}, 0});
    ops.push_back(Op{OpKind::BW, Work{}, Work{m, 0}, 0});
  }
  return ops;
}

std::vector<Op> one_f_one_b_schedule(const ScheduleShape& shape, int rank) {
  // Rank r runs ahead by PP-1-r forwards so that the last rank's first backward can start as soon as the
  // first micro-batch reaches it; from then on each rank alternates one forward and one backward, which
  // caps its stored activations at PP-r micro-batches.
  const int m_total = shape.micro_batches;
  const int warmup = std::min(shape.ranks - rank - 1, m_total);
  std::vector<Op> ops;
  for (int m = 0; m < warmup; ++m) ops.push_back(Op{OpKind::F, Work{m, 0}, Work{}, 0});
  for (int i = 0; i < m_total - warmup; ++i) {
    ops.push_back(Op{OpKind::F, Work{warmup + i, 0}, Work{}, 0});
    ops.push_back(Op{OpKind::BW, Work{}, Work{i, 0}, 0});
  }
  for (int m = m_total - warmup; m < m_total; ++m) ops.push_back(Op{OpKind::BW, Work{}, Work{m, 0}, 0});
  return ops;
}

// The eight steps of the reference's step(), shared by DualPipe and DualPipeV. They read the same once
// written in the reference's local terms:
//   n      ranks per "half": PP/2 for DualPipe (each half mirrors the other), PP for DualPipeV;
//   r      this rank's position in its half: min(rank, PP-1-rank) for DualPipe, rank for DualPipeV;
//   count  micro-batches per chunk: M/2 for DualPipe, M for DualPipeV;
//   local phase 0/1: the chunk whose micro-batches reach this rank first (0) or second (1). For DualPipeV
//   that is chunk 0/1; DualPipe's second-half ranks meet the PP-1 -> 0 direction (chunk 1) first, which is
//   the reference's `phase ^= is_in_second_half`.
// The rank with r == n-1 (DualPipe's two middle ranks, DualPipeV's last rank) has no step-1 warm-up. Its
// first main-step pair runs as F then BW, not overlapped: the reference notes this shrinks the bubble, as
// its neighbours are waiting on this rank's outputs there and separate ops let them leave sooner.
void dual_steps(int n, int r, int count, int flip, Emitter& e) {
  const int c0 = 0 ^ flip;  // local phase 0 as a chunk
  const int c1 = 1 ^ flip;
  const bool innermost = r == n - 1;  // see above

  // 1. nF0: the other chunk's first micro-batch is still on its way to this rank; run forwards of the
  //    near chunk meanwhile, two per rank between this one and the innermost rank.
  e.set_phase(0);
  for (int i = 0; i < 2 * (n - r - 1); ++i) e.f(c0);

  // 2. nF0F1: the second chunk's forwards have started arriving; alternate the two.
  e.set_phase(1);
  for (int i = 0; i < r + 1; ++i) {
    e.f(c0);
    e.f(c1);
  }

  // 3. nB1W1F1: chunk 1's backwards have begun to come back while it still has forwards to start. Each
  //    backward splits off its W and runs it at once: a W needs nothing from another rank, so it fills the
  //    slot while the next forward's input is still in flight.
  e.set_phase(2);
  for (int i = 0; i < n - r - 1; ++i) {
    e.b(c1, /*split=*/true);
    e.w();
    e.f(c1);
  }

  // 4. nF0B1F1B0, the main step: each op overlaps a forward of one chunk with a backward of the other
  //    (except the innermost rank's first pair).
  e.set_phase(3);
  for (int i = 0; i < count - 2 * n + r + 1; ++i) {
    if (i == 0 && innermost) {
      e.f(c0);
      e.b(c1, /*split=*/false);
    } else {
      e.fb(c0, c1);
    }
    e.fb(c1, c0);
  }

  // 5. nB1F1B0: chunk 0's forwards are done; chunk 1 still has some, each overlapped with a chunk-0 backward.
  e.set_phase(4);
  for (int i = 0; i < n - r - 1; ++i) {
    e.b(c1, /*split=*/false);
    e.fb(c1, c0);
  }

  // 6. nB1B0: only backwards are left. From the middle of this step on they defer their weight gradients,
  //    which lets the input gradients the other ranks wait for go out first. The switch lands between B1
  //    and B0 of the middle iteration when r is even, before that B1 when r is odd: r+1 split backwards
  //    either way.
  e.set_phase(5);
  bool split = false;
  for (int i = 0; i < r + 1; ++i) {
    if (i == (r + 1) / 2 && r % 2 == 1) split = true;
    e.b(c1, split);
    if (i == (r + 1) / 2 && r % 2 == 0) split = true;
    e.b(c0, split);
  }

  // 7. nWB0: the last chunk-0 backwards arrive one by one; fill the waits with the deferred weight gradients.
  e.set_phase(6);
  for (int i = 0; i < n - r - 1; ++i) {
    e.w();
    e.b(c0, /*split=*/true);
  }

  // 8. nW: drain the deferred weight gradients (n in total, as many as the split backwards above).
  e.set_phase(7);
  for (int i = 0; i < r + 1; ++i) e.w();
}

}  // namespace

ScheduleKind parse_schedule_kind(std::string_view name) {
  for (ScheduleKind kind :
       {ScheduleKind::none, ScheduleKind::one_f_one_b, ScheduleKind::dualpipe, ScheduleKind::dualpipev}) {
    if (name == to_string(kind)) return kind;
  }
  bad("unknown pipeline schedule '" + std::string(name) + "' (choices: none, 1f1b, dualpipe, dualpipev)");
}

const char* to_string(ScheduleKind kind) {
  switch (kind) {
    case ScheduleKind::none:
      return "none";
    case ScheduleKind::one_f_one_b:
      return "1f1b";
    case ScheduleKind::dualpipe:
      return "dualpipe";
    case ScheduleKind::dualpipev:
      return "dualpipev";
  }
  return "?";
}

const char* to_string(OpKind kind) {
  switch (kind) {
    case OpKind::F:
      return "F";
    case OpKind::B:
      return "B";
    case OpKind::W:
      return "W";
    case OpKind::BW:
      return "BW";
    case OpKind::FB:
      return "F&B";
  }
  return "?";
}

void validate(const ScheduleShape& shape) {
  switch (shape.kind) {
    case ScheduleKind::none:
    case ScheduleKind::one_f_one_b:
    case ScheduleKind::dualpipe:
    case ScheduleKind::dualpipev:
      break;
    default:
      bad("pipeline schedule: unknown ScheduleKind value " + std::to_string(static_cast<int>(shape.kind)));
  }
  const std::string name = shape_name(shape);
  if (shape.ranks < 1) bad(name + ": ranks must be >= 1");
  if (shape.micro_batches < 1) bad(name + ": micro_batches must be >= 1");
  switch (shape.kind) {
    case ScheduleKind::none:
      if (shape.ranks != 1) bad(name + ": ranks must be 1 without pipeline parallelism");
      break;
    case ScheduleKind::one_f_one_b:
      break;
    case ScheduleKind::dualpipe:
      if (shape.ranks % 2 != 0) bad(name + ": ranks must be even (each half of the ranks mirrors the other)");
      if (shape.micro_batches % 2 != 0)
        bad(name + ": micro_batches must be even (half enter from each end of the pipeline)");
      if (shape.micro_batches < 2 * shape.ranks)
        bad(name + ": micro_batches must be >= 2 * ranks = " + std::to_string(2 * shape.ranks) +
            " (the reference's requirement: the main step needs M/2 - PP + 1 >= 1 pairs on every rank)");
      break;
    case ScheduleKind::dualpipev:
      if (shape.micro_batches < 2 * shape.ranks)
        bad(name + ": micro_batches must be >= 2 * ranks = " + std::to_string(2 * shape.ranks) +
            " (the reference's requirement: the main step needs M - 2*PP + 1 >= 1 pairs on every rank)");
      break;
  }
}

int num_stages(const ScheduleShape& shape) {
  validate(shape);
  return shape.kind == ScheduleKind::dualpipev ? 2 * shape.ranks : shape.ranks;
}

int chunks_per_rank(const ScheduleShape& shape) {
  validate(shape);
  return shape.kind == ScheduleKind::dualpipe || shape.kind == ScheduleKind::dualpipev ? 2 : 1;
}

int stage_of(const ScheduleShape& shape, int rank, int chunk) {
  const int chunks = chunks_per_rank(shape);
  if (rank < 0 || rank >= shape.ranks)
    bad(shape_name(shape) + ": rank " + std::to_string(rank) + " is out of range [0, " +
        std::to_string(shape.ranks) + ")");
  if (chunk < 0 || chunk >= chunks)
    bad(shape_name(shape) + ": chunk " + std::to_string(chunk) + " is out of range [0, " +
        std::to_string(chunks) + ")");
  if (chunk == 0) return rank;
  return shape.kind == ScheduleKind::dualpipe ? shape.ranks - 1 - rank : 2 * shape.ranks - 1 - rank;
}

Place place_of(const ScheduleShape& shape, int stage, int micro_batch) {
  const int stages = num_stages(shape);
  if (stage < 0 || stage >= stages)
    bad(shape_name(shape) + ": stage " + std::to_string(stage) + " is out of range [0, " +
        std::to_string(stages) + ")");
  if (micro_batch < 0 || micro_batch >= shape.micro_batches)
    bad(shape_name(shape) + ": micro_batch " + std::to_string(micro_batch) + " is out of range [0, " +
        std::to_string(shape.micro_batches) + ")");
  switch (shape.kind) {
    case ScheduleKind::none:
    case ScheduleKind::one_f_one_b:
      return Place{stage, 0};
    case ScheduleKind::dualpipe:
      // The second half of the micro-batches enters at rank PP-1, so stage s of theirs sits on rank PP-1-s.
      if (micro_batch < shape.micro_batches / 2) return Place{stage, 0};
      return Place{shape.ranks - 1 - stage, 1};
    case ScheduleKind::dualpipev:
      if (stage < shape.ranks) return Place{stage, 0};
      return Place{2 * shape.ranks - 1 - stage, 1};
  }
  return Place{};
}

std::vector<Op> rank_schedule(const ScheduleShape& shape, int rank) {
  validate(shape);
  if (rank < 0 || rank >= shape.ranks)
    bad(shape_name(shape) + ": rank " + std::to_string(rank) + " is out of range [0, " +
        std::to_string(shape.ranks) + ")");
  switch (shape.kind) {
    case ScheduleKind::none:
      return single_rank_schedule(shape);
    case ScheduleKind::one_f_one_b:
      return one_f_one_b_schedule(shape, rank);
    case ScheduleKind::dualpipe: {
      const int half = shape.ranks / 2;
      const bool second_half = rank >= half;
      std::vector<Op> ops;
      Emitter e(ops, 0, shape.micro_batches / 2);
      dual_steps(half, std::min(rank, shape.ranks - 1 - rank), shape.micro_batches / 2, second_half ? 1 : 0,
                 e);
      return ops;
    }
    case ScheduleKind::dualpipev: {
      std::vector<Op> ops;
      Emitter e(ops, 0, 0);
      dual_steps(shape.ranks, rank, shape.micro_batches, 0, e);
      return ops;
    }
  }
  return {};
}

}  // namespace ferry::model::pipeline
