// Pipeline-parallel schedules: which forward and backward work each pipeline rank runs, and in what order.
//
// The model is cut into stages (0 = embedding side, num_stages-1 = loss side). A rank holds one stage (none,
// 1F1B) or two (DualPipe, DualPipeV); its stages are its "chunks" 0 and 1. A step splits the batch into
// micro-batches, and rank_schedule() lists one rank's ops for one step. The lists hold no timing: a rank
// runs its ops in order, each as soon as its inputs have arrived from the neighbouring stages.
//
//   none       one rank, one stage: F(m) then BW(m) for every micro-batch.
//   1f1b       the classic non-interleaved 1F1B (as in Megatron): PP-1-rank warm-up forwards, then one
//              forward and one full backward in turn, then the remaining backwards.
//   dualpipe   DeepSeek-V3's bidirectional schedule: half of the micro-batches enter at rank 0, the other
//   half
//              at rank PP-1, so every rank holds one stage of each direction and overlaps a forward of one
//              direction with a backward of the other (F&B).
//   dualpipev  Sea AI Lab's "cut-in-half" DualPipe: 2·PP stages folded into a V; rank r holds stage r and
//              stage 2·PP-1-r, and every micro-batch goes down the ranks and back up.
//
// The DualPipe and DualPipeV lists follow step() of the reference implementation
// (github.com/deepseek-ai/DualPipe, dualpipe/dualpipe.py and dualpipev.py) op for op, including which
// backwards split their weight gradients off into a later W (zero-bubble style) and which are overlapped.
//
// simulate() replays the lists with fixed op costs and zero transfer time, which checks that a schedule is
// complete and deadlock-free and measures its bubble; published_bubble() is the DualPipe README's formula.
#pragma once

#include <string_view>
#include <vector>

namespace ferry::model::pipeline {

enum class ScheduleKind { none, one_f_one_b, dualpipe, dualpipev };

// "none" "1f1b" "dualpipe" "dualpipev"; anything else throws invalid_argument naming the value and the
// choices.
ScheduleKind parse_schedule_kind(std::string_view name);
const char* to_string(ScheduleKind kind);  // the spellings parse_schedule_kind() accepts

// F:  forward of one chunk.
// B:  input-gradient backward only; its weight gradients are deferred to a later W.
// W:  the deferred weight gradients of an earlier B of the same (micro_batch, chunk), on the same rank.
// BW: full backward (B with its W inline).
// FB: an overlapped pair: the forward of `f` and the full backward (B+W inline) of `b`, interleaved by the
//     executor so that one's communication hides behind the other's compute.
enum class OpKind { F, B, W, BW, FB };
const char* to_string(OpKind kind);  // "F" "B" "W" "BW" "F&B"

struct Work {
  int micro_batch = -1;
  int chunk = -1;  // which of this rank's stages (0 or 1); stage_of() gives the model stage
};

struct Op {
  OpKind kind;
  Work f;         // F and FB
  Work b;         // B, W, BW and FB
  int phase = 0;  // DualPipe/DualPipeV: the step of the reference's step() that emitted it (0..7); else 0
};

struct ScheduleShape {
  ScheduleKind kind = ScheduleKind::none;
  int ranks = 1;          // PP: pipeline ranks (1 for none)
  int micro_batches = 1;  // M per step (for dualpipe: in total, half enter from each end)
};

// Throws invalid_argument naming the field when the shape cannot be scheduled:
//   every kind: ranks >= 1 and micro_batches >= 1;
//   none:       ranks == 1;
//   1f1b:       nothing more (M < PP is legal, the pipeline just never fills);
//   dualpipe:   ranks even, micro_batches even and >= 2·ranks (the reference asserts exactly this);
//   dualpipev:  micro_batches >= 2·ranks (the reference's assert; one rank is legal and gives a V of two
//               stages on the same rank).
// Every function below validates its shape first.
void validate(const ScheduleShape& shape);

int num_stages(const ScheduleShape& shape);       // 1 (none), ranks (1f1b, dualpipe), 2·ranks (dualpipev)
int chunks_per_rank(const ScheduleShape& shape);  // 1 (none, 1f1b) or 2 (dualpipe, dualpipev)

// The model stage that chunk `chunk` of `rank` runs:
//   none, 1f1b: stage rank;
//   dualpipe:   chunk 0 = stage rank (micro-batches [0, M/2) flow ranks 0 -> PP-1),
//               chunk 1 = stage PP-1-rank (micro-batches [M/2, M) flow ranks PP-1 -> 0);
//   dualpipev:  chunk 0 = stage rank, chunk 1 = stage 2·PP-1-rank (every micro-batch goes 0 -> PP-1 on
//               chunk 0 and comes back PP-1 -> 0 on chunk 1).
// In the reference, DualPipe's module[0] always carries the 0 -> PP-1 direction, so chunk here is the
// reference's phase after its `phase ^= is_in_second_half`.
int stage_of(const ScheduleShape& shape, int rank, int chunk);

// Who runs `stage` for micro-batch `micro_batch` (for dualpipe the answer depends on the micro-batch's
// direction).
struct Place {
  int rank = 0;
  int chunk = 0;
};
Place place_of(const ScheduleShape& shape, int stage, int micro_batch);

// This rank's ops for one step, in execution order. Every (micro_batch, stage) that the rank holds gets
// exactly one forward and one backward: a BW, the b of an FB, or a B followed later by its W. Within a chunk,
// micro-batches run their forwards in increasing order and their backwards in increasing order; the Ws of
// one rank retire its Bs first in, first out (as the reference's WeightGradStore does).
std::vector<Op> rank_schedule(const ScheduleShape& shape, int rank);

// ---- Simulation (schedule_sim.cpp) ----

// Cost of each op kind in arbitrary time units. FB is one overlapped pair; BW costs B + W.
struct OpCosts {
  double F = 1, B = 1, W = 1, FB = 2;
};

struct Simulation {
  double makespan = 0;
  std::vector<double> busy;    // per rank: sum of its op costs
  std::vector<double> bubble;  // per rank: makespan - busy
};

// Runs every rank's op list in order. An op starts when its rank is free and its inputs exist:
//   F of (m, s)                     after F of (m, s-1);
//   B, BW or the b of FB of (m, s)  after F of (m, s) and after the backward of (m, s+1) (the last stage:
//                                   after its F only);
//   W of (m, s)                     after the B of (m, s);
// and an FB waits for the inputs of both halves. Transfers take no time. Throws invalid_argument naming the
// rank and op when the lists deadlock, when an op names a micro-batch or chunk out of range or runs a
// micro-batch's stage on another rank than place_of() says, or when a forward, backward or W of some
// (micro-batch, stage) runs twice or never (a W without a split B counts).
Simulation simulate(const ScheduleShape& shape, const OpCosts& costs);
// The same for hand-made lists (per_rank[r] is rank r's list; per_rank.size() must equal shape.ranks).
Simulation simulate(const ScheduleShape& shape, const std::vector<std::vector<Op>>& per_rank,
                    const OpCosts& costs);

// The bubble per rank that the DualPipe README publishes. The README counts PP in stages and writes B for a
// full backward (our B + W), so in OpCosts terms:
//   none       0
//   1f1b       (PP-1)(F + B + W)
//   dualpipe   (PP/2 - 1)(FB + B - 2W)   [README: (PP/2-1)(F&B + B - 3W), its B being our B + W]
//   dualpipev  (ranks - 1)(FB + B - 2W)  [the same row with PP = 2·ranks stages]
// What simulate() gives (tests/model/test_schedule.cpp pins each of these down):
//   - 1F1B: exactly the formula, on every rank, for any costs and any M.
//   - DualPipe: independent of M. When F = B >= W and F + W <= FB <= F + B + W the formula is the worst
//     rank's bubble (the middle ranks; outer ones idle less: 1 2 3 3 3 3 2 1 at PP = 8 with the default
//     costs, formula 3), and every rank's when FB = F + B + W. Elsewhere it is an estimate, at PP = 8:
//     F = B = W = 1, FB = 1.5 gives 1.5 against 4.5 simulated (an overlap better than F + W starves the
//     pairs); F = 2, B = W = 1, FB = 4 gives 9 against 12; F = W = 1, B = 2, FB = 4 gives 12 against 11.
//   - DualPipeV on R ranks is DualPipe on 2R ranks with 2M micro-batches cut in half: the same makespan, and
//     rank r idles exactly as long as DualPipe's rank r. So "the same formula" is right, with PP in stages.
double published_bubble(const ScheduleShape& shape, const OpCosts& costs);

}  // namespace ferry::model::pipeline
