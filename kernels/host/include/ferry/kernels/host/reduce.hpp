// Combine's reduction on the host: protocol::reduce_rows (numeric.hpp) compiled for the widest vector unit
// this CPU has (AVX-512, AVX2, or the build's baseline), picked once at load time. Same bits on every path.
#pragma once

#include "ferry/kernels/protocol/numeric.hpp"

namespace ferry::kernels::host {

void reduce_rows(const protocol::ReduceRows& job);

}  // namespace ferry::kernels::host
