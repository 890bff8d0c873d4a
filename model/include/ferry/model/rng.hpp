// A small deterministic random generator (xoshiro256**, seeded through splitmix64).
//
// The standard library's distributions are implementation-defined, so initial weights and data order would
// differ between standard libraries; everything random in the model comes from here instead, and the whole
// state is four words that a checkpoint saves.
#pragma once

#include <array>
#include <cstdint>

namespace ferry::model {

class Rng {
 public:
  using State = std::array<std::uint64_t, 4>;

  explicit Rng(std::uint64_t seed);

  std::uint64_t next();
  // Uniform in [0, 1) with 53 random bits.
  double uniform();
  // Standard normal (Box-Muller; draws two uniforms per call and keeps no spare, so the state stays 4 words).
  double normal();
  // Uniform integer in [0, n); n > 0. Rejection sampling, no modulo bias.
  std::uint64_t below(std::uint64_t n);

  State state() const { return state_; }
  void set_state(const State& state) { state_ = state; }

 private:
  State state_;
};

}  // namespace ferry::model
