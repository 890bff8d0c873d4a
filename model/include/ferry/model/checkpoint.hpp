// Binary checkpoints: everything that decides the rest of a run, so that a resumed run computes bitwise the
// same losses as one that never stopped.
//
// Layout (little-endian, version 2):
//   "FERRYCKP" | u32 version | u32 0x01020304 (byte-order probe)
//   u64 length + model config JSON | u64 length + train config JSON | u64 length + job fingerprint JSON
//   i64 step | i64 adam steps | 4 × u64 data RNG state
//   u64 n | f32 params[n] | f32 adam m[n] | f32 adam v[n] | f32 ema[n]
//   u64 MoE layers | per layer: u64 E, f32 bias[E]
//   u64 FNV-1a 64 of every byte before it
// A file is written to "<path>.tmp", flushed to disk (fsync), renamed over path, and the directory flushed
// too, so that after a crash path holds either the previous checkpoint or the new one, whole. Every rank of a
// run saves its own file; the job fingerprint and the step let a resume check that a set of files belongs
// together (Trainer::load).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ferry/model/config.hpp"
#include "ferry/model/rng.hpp"

namespace ferry::model {

inline constexpr std::uint32_t kCheckpointVersion = 2;

// Which run a checkpoint belongs to, and which part of it.
struct JobFingerprint {
  std::uint64_t run_id = 0;  // drawn when the run started (rank 0's draw, every rank's), kept when it resumes
  int world_size = 1;
  int rank = 0;
  // The expert layout: each expert is trained by the PP ranks of one replica (PP = 1: by one rank), and a
  // rank's file holds current values of those experts only.
  int pipeline_ranks = 1;

  bool operator==(const JobFingerprint&) const = default;
};

struct TrainerState {
  ModelConfig model;
  TrainConfig train;  // informational: the resuming run may change the schedule on purpose
  JobFingerprint job;
  std::int64_t step = 0;
  std::int64_t adam_steps = 0;
  Rng::State data_rng{};
  std::vector<float> params, adam_m, adam_v, ema;
  std::vector<std::vector<float>> balance_bias;  // per MoE layer [E]
};

// A file larger than this is no checkpoint ferry wrote (a trainer passes the bound its own model gives).
inline constexpr std::uint64_t kMaxCheckpointBytes = std::uint64_t{1} << 40;

void save_checkpoint(const std::string& path, const TrainerState& state);
// Throws ferry::Error naming the file: unsupported (another format version or byte order) or
// invalid_argument (cannot be opened, not a checkpoint, larger than max_bytes, truncated, checksum mismatch,
// malformed config, a negative step).
TrainerState load_checkpoint(const std::string& path, std::uint64_t max_bytes = kMaxCheckpointBytes);

}  // namespace ferry::model
