#include "ferry/model/params.hpp"

#include <algorithm>

#include "ferry/core/error.hpp"
#include "ferry/model/rng.hpp"

namespace ferry::model {

template <typename T>
ParamRef ParamStore<T>::add(std::string name, std::vector<int> shape, ParamInit init, double init_std) {
  if (allocated_) fail(Errc::internal, "ParamStore::add(" + name + ") after allocate()");
  std::size_t size = 1;
  for (int d : shape) {
    if (d < 1) fail(Errc::invalid_argument, "parameter " + name + " has an empty dimension");
    size *= static_cast<std::size_t>(d);
  }
  ParamInfo info;
  info.name = std::move(name);
  info.decay = shape.size() >= 2;
  info.shape = std::move(shape);
  info.offset = total_;
  info.size = size;
  info.init = init;
  info.init_std = init_std;
  info_.push_back(std::move(info));
  total_ += size;
  return ParamRef{info_.back().offset, size};
}

template <typename T>
void ParamStore<T>::allocate() {
  values_.assign(total_, T(0));
  grads_.assign(total_, T(0));
  allocated_ = true;
}

template <typename T>
void ParamStore<T>::initialize(std::uint64_t seed) {
  if (!allocated_) fail(Errc::internal, "ParamStore::initialize() before allocate()");
  Rng rng(seed);
  for (const ParamInfo& p : info_) {
    T* v = values_.data() + p.offset;
    for (std::size_t i = 0; i < p.size; ++i) {
      switch (p.init) {
        case ParamInit::normal:
          v[i] = static_cast<T>(static_cast<float>(rng.normal() * p.init_std));
          break;
        case ParamInit::ones:
          v[i] = T(1);
          break;
        case ParamInit::zeros:
          v[i] = T(0);
          break;
      }
    }
  }
}

template <typename T>
void ParamStore<T>::zero_grads() {
  std::fill(grads_.begin(), grads_.end(), T(0));
}

template <typename T>
const ParamInfo& ParamStore<T>::find(const std::string& name) const {
  for (const ParamInfo& p : info_)
    if (p.name == name) return p;
  fail(Errc::invalid_argument, "no parameter named '" + name + "'");
}

template class ParamStore<float>;
template class ParamStore<double>;

}  // namespace ferry::model
