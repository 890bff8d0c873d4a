// All parameters of a model in one flat array, with their gradients in a second array of the same layout.
//
// One flat array makes the optimizer, gradient clipping, the EMA and checkpoints single loops over memory,
// and lets a pipeline or expert-parallel run compare its gradients with a single-process run by name.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace ferry::model {

// Where one tensor lives inside the flat arrays.
struct ParamRef {
  std::size_t offset = 0;
  std::size_t size = 0;
};

enum class ParamInit { normal, ones, zeros };

struct ParamInfo {
  std::string name;        // e.g. "block1.moe.experts.w13"
  std::vector<int> shape;  // row-major
  std::size_t offset = 0;
  std::size_t size = 0;
  ParamInit init = ParamInit::normal;
  double init_std = 0;  // for ParamInit::normal
  bool decay = false;   // AdamW weight decay applies (matrices yes, norm weights no)
};

template <typename T>
class ParamStore {
 public:
  // Registers a tensor; only before allocate(). Tensors of rank >= 2 decay, vectors do not.
  ParamRef add(std::string name, std::vector<int> shape, ParamInit init, double init_std = 0);
  // Sizes the value and gradient arrays (gradients zero, values zero until initialize()).
  void allocate();
  // Fills every tensor in registration order from one generator seeded with `seed`, drawn in double and
  // rounded to T, so a float and a double model with the same seed start from the same point.
  void initialize(std::uint64_t seed);
  void zero_grads();

  T* value(ParamRef ref) { return values_.data() + ref.offset; }
  const T* value(ParamRef ref) const { return values_.data() + ref.offset; }
  T* grad(ParamRef ref) { return grads_.data() + ref.offset; }
  const T* grad(ParamRef ref) const { return grads_.data() + ref.offset; }

  std::span<T> values() { return values_; }
  std::span<const T> values() const { return values_; }
  std::span<T> grads() { return grads_; }
  std::span<const T> grads() const { return grads_; }
  const std::vector<ParamInfo>& info() const { return info_; }
  // The tensor called `name`; throws invalid_argument naming it when absent.
  const ParamInfo& find(const std::string& name) const;
  std::size_t size() const { return total_; }

 private:
  std::vector<ParamInfo> info_;
  std::size_t total_ = 0;
  bool allocated_ = false;
  std::vector<T> values_;
  std::vector<T> grads_;
};

}  // namespace ferry::model
