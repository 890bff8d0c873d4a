// Runs a pipeline schedule (schedule.hpp) on the real model, expert parallel inside each stage.
//
// Layout: R ranks = PP pipeline ranks × D data/expert-parallel replicas, rank = d · PP + p. Pipeline rank p
// of every replica holds the same stages (schedule.hpp's stage_of), so the D ranks with one p form that
// stage's expert-parallel group: a ferry::Buffer over a sub-group of the job (with 2 ranks per node and PP =
// 2, the groups {0, 2} and {1, 3} span both nodes and their all-to-all crosses the fabric). Activations and
// their gradients travel between pipeline ranks through a ferry::PeerChannel (the fabric, point to point).
//
// One step: every replica takes its share of the global batch, cut into M micro-batches; the schedule's ops
// run in order; an F&B op runs its two chunks on two threads that hand the CPU to each other whenever one
// issues an all-to-all (exchange_observer.hpp), so that each chunk's dispatch or combine is in flight while
// the other computes. With overlap off, the same op runs F then B, waiting on every all-to-all at once.
// Gradients go through the PeerChannel too (reduce-scatter + all-gather, summed in rank order in double):
// dense parameters over the whole job (mirrored DualPipe stages, every replica), the routed experts over the
// pipeline ranks of their owner's replica only; then divided by D · M, so the step equals a single process's
// on the whole global batch. As in plain expert parallelism, a rank's copy of other replicas' experts is
// neither trained nor used.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "ferry/core/deadline.hpp"
#include "ferry/group.hpp"
#include "ferry/model/distributed.hpp"
#include "ferry/model/model.hpp"
#include "ferry/model/pipeline/schedule.hpp"
#include "ferry/model/pipeline/trace.hpp"

namespace ferry::model::pipeline {

struct PipelineOptions {
  ScheduleKind schedule = ScheduleKind::none;
  int pipeline_ranks = 1;  // PP; none needs 1
  int micro_batches = 1;   // M per replica per step
  bool overlap = true;  // F&B pairs interleave their chunks; off: F then B, every all-to-all waited at once
  bool trace = false;   // record the timeline (ops, compute, all-to-all, pipeline transfers)
  Duration timeout = kDefaultTimeout;  // every wait of the Buffer and the pipeline channel
};

class PipelineExecutor {
 public:
  // Collective over the group. The model is the master copy (parameters, gradients, balancing biases) every
  // stage reads and accumulates into; it must outlive the executor, as must the group.
  PipelineExecutor(Group& group, const Model<float>& model, const PipelineOptions& options);
  ~PipelineExecutor();
  PipelineExecutor(const PipelineExecutor&) = delete;
  PipelineExecutor& operator=(const PipelineExecutor&) = delete;

  // One training step's gradients: global_batch [global_rows, seq + 2] is the same on every rank. Leaves the
  // reduced gradients in model.params().grads() and returns the averaged losses and summed loads.
  ReducedStep run_step(Model<float>& model, const std::uint8_t* global_batch, int global_rows);

  const ScheduleShape& shape() const;
  int replicas() const;  // D
  // Every rank's trace, gathered on every rank (collective), sorted by start.
  std::vector<TraceEvent> gather_trace();
  // What the schedule's published formula predicts for this rank's bubble per step, with the op durations
  // measured in `metrics` (seconds).
  double published_bubble_s(const OverlapMetrics& metrics) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

}  // namespace ferry::model::pipeline
