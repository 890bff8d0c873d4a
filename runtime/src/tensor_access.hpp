// How ferry builds a Tensor over memory it allocated itself (a Buffer's device block cache), which the public
// constructors cannot express.
#pragma once

#include <cstddef>
#include <initializer_list>
#include <memory>

#include "ferry/tensor.hpp"

namespace ferry::detail {

struct TensorAccess {
  // A tensor of `shape` and `dtype` on `device` over `storage`, which owns at least its bytes (the last
  // reference to the tensor or a copy of it releases it).
  static Tensor adopt(std::shared_ptr<std::byte> storage, std::initializer_list<std::int64_t> shape,
                      DType dtype, Device device);
};

}  // namespace ferry::detail
