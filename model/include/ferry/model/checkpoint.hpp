// Binary checkpoints: everything that decides the rest of a run, so that a resumed run computes bitwise the
// same losses as one that never stopped.
//
// Layout (little-endian, version 1):
//   "FERRYCKP" | u32 version | u32 0x01020304 (byte-order probe)
//   u64 length + model config JSON | u64 length + train config JSON
//   i64 step | i64 adam steps | 4 × u64 data RNG state
//   u64 n | f32 params[n] | f32 adam m[n] | f32 adam v[n] | f32 ema[n]
//   u64 MoE layers | per layer: u64 E, f32 bias[E]
//   u64 FNV-1a 64 of every byte before it
// Files are written to "<path>.tmp" and renamed, so a crash never leaves a half-written checkpoint at path.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "ferry/model/config.hpp"
#include "ferry/model/rng.hpp"

namespace ferry::model {

inline constexpr std::uint32_t kCheckpointVersion = 1;

struct TrainerState {
  ModelConfig model;
  TrainConfig train;  // informational: the resuming run may change the schedule on purpose
  std::int64_t step = 0;
  std::int64_t adam_steps = 0;
  Rng::State data_rng{};
  std::vector<float> params, adam_m, adam_v, ema;
  std::vector<std::vector<float>> balance_bias;  // per MoE layer [E]
};

void save_checkpoint(const std::string& path, const TrainerState& state);
// Throws ferry::Error naming the file: unsupported (not a checkpoint, other version or byte order) or
// invalid_argument (truncated, checksum mismatch, malformed config).
TrainerState load_checkpoint(const std::string& path);

}  // namespace ferry::model
