// Training: one step = batch → forward → backward → clip → AdamW → EMA → balancing biases.
// run_training() is what `ferry train` calls: it builds everything from configs, optionally resumes from and
// saves checkpoints, and reports every step.
//
// Expert parallel (Parallelism): each of R ranks draws the same global batch of R · train.batch rows and
// trains on its own train.batch rows, its MoE layers reach the experts through the given exchanges, and
// reduce_step() (distributed.hpp) makes the step equal to a single process's on the whole global batch.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "ferry/model/checkpoint.hpp"
#include "ferry/model/config.hpp"
#include "ferry/model/data.hpp"
#include "ferry/model/distributed.hpp"
#include "ferry/model/model.hpp"
#include "ferry/model/optim.hpp"
#include "ferry/model/rng.hpp"

namespace ferry::model {

struct StepStats {
  std::int64_t step = 0;  // 0-based index of the step just taken
  double lr = 0;          // learning rate it used
  double loss = 0;        // total: main + λ · mtp + balance
  double main_loss = 0;   // nats per byte
  double mtp_loss = 0;
  double balance_loss = 0;
  double grad_norm = 0;           // global norm before clipping
  std::int64_t tokens = 0;        // B · T over all ranks
  double load_max_over_mean = 0;  // worst MoE layer's max/mean tokens per expert (0 without MoE)
  std::vector<std::vector<std::int64_t>> expert_load;  // per MoE layer: tokens per expert
  // Activation bytes of one micro-batch's forward and backward (Segment::peak_activation_bytes()), the
  // largest over the ranks and, pipelined, over the stages: a rank's batch is its one micro-batch without a
  // pipeline.
  std::int64_t activation_peak_bytes = 0;
  double seconds = 0;  // wall time of the step
  double tokens_per_s = 0;
};

// How a Trainer spreads over ranks; the default is one process with every expert local.
struct Parallelism {
  std::shared_ptr<Collective> collective;   // null: one process
  int pipeline_ranks = 1;                   // PP of a pipelined run: its expert layout (JobFingerprint)
  ExchangeFactory<float> exchange_factory;  // null: LocalExpertExchange in every MoE layer
  // Set by a pipelined run (pipeline/executor.hpp): computes the step's reduced gradients from the whole
  // global batch [global_rows, seq + 2] in place of this rank's forward + backward + reduce_step().
  std::function<ReducedStep(Model<float>& model, const std::uint8_t* global_batch, int global_rows)>
      step_gradients;
};

class Trainer {
 public:
  // Collective when parallel.collective is set (the ranks agree on the run's id).
  Trainer(const ModelConfig& model_config, const TrainConfig& train_config,
          std::shared_ptr<const DataSource> data, Parallelism parallel = {});

  // One step on the next batch drawn from the data source.
  StepStats step();
  // One step on this rank's batch [train.batch, seq + 2] (does not advance the data RNG).
  StepStats step(const std::uint8_t* tokens);

  // Writes this rank's checkpoint (checkpoint.hpp), with the step and the job fingerprint.
  void save(const std::string& path) const;
  // Restores a save()d state. Throws invalid_argument naming the field when the model config differs, and
  // naming both values when the file was written for another world size, rank or expert layout, or is at a
  // step not below the run's steps. With
  // several ranks it is collective: the ranks compare their files, and unless every one loaded and all are
  // at the same step of the same run (a crash between two ranks' saves leaves them apart), every rank throws
  // the same invalid_argument naming the ranks and their values.
  void load(const std::string& path);

  std::int64_t steps_done() const { return step_; }
  std::uint64_t run_id() const { return run_id_; }
  int ranks() const { return parallel_.collective ? parallel_.collective->size() : 1; }
  int rank() const { return parallel_.collective ? parallel_.collective->rank() : 0; }
  Model<float>& model() { return model_; }
  const Model<float>& model() const { return model_; }
  const std::vector<float>& ema() const { return ema_; }
  const AdamW& optimizer() const { return adam_; }
  const TrainConfig& config() const { return train_; }
  const DataSource& data() const { return *data_; }

 private:
  // Clipping, AdamW, EMA and balancing from reduced gradients; fills the stats.
  StepStats finish_step(std::chrono::steady_clock::time_point start, const ReducedStep& reduced,
                        bool norm_known);
  // Why `state` (read from path) cannot resume this trainer, or "": another model or job layout, or a step
  // that is not below the run's steps.
  std::string resume_problem(const TrainerState& state, const std::string& path) const;
  // The largest file a checkpoint of this model can be: a larger one is refused unread.
  std::uint64_t checkpoint_bytes_bound() const;
  void restore(TrainerState state, const std::string& path);

  TrainConfig train_;
  Parallelism parallel_;
  std::shared_ptr<const DataSource> data_;
  Model<float> model_;
  AdamW adam_;
  std::vector<float> ema_;
  Rng data_rng_;
  std::int64_t step_ = 0;
  std::uint64_t run_id_ = 0;
  std::vector<std::uint8_t> batch_;  // the global batch [ranks · train.batch, seq + 2]
};

struct RunOptions {
  ModelConfig model;
  TrainConfig train;
  DataConfig data;
  // The data already read (a command reads it while checking its request, before any work); null: read
  // from `data`.
  std::shared_ptr<const DataSource> data_source;
  std::string resume_from;      // checkpoint to continue from ("" = start fresh)
  std::string save_to;          // checkpoint written at the end and every save_every steps ("" = never)
  std::int64_t save_every = 0;  // >= 0
  std::int64_t stop_after =
      0;  // >= 0: run at most this many steps in this call, e.g. to split a run (0 = no limit)
  // Default: one process.
  Parallelism parallel;
};

// Trains from step 0 (or the resumed step) up to train.steps (or stop_after steps), calling on_step after
// every step, and returns the stats of the steps it ran.
std::vector<StepStats> run_training(const RunOptions& options,
                                    const std::function<void(const StepStats&)>& on_step = {});

// One human-readable line: "step 12 | loss 2.3456 (main 2.1 mtp 2.5 bal 0.0001) | lr ... | load max/mean
// ... | act <activation peak> KiB | ... tok/s".
std::string format_step(const StepStats& stats);

}  // namespace ferry::model
