// The host's combine reduction, one copy per vector width (see host_io.hpp).
//
// The build targets the baseline x86-64 (SSE2), where bf16 rows convert 4 elements at a time; AVX-512 does 16
// and measured 3.7x faster on combine's reduction (docs/perf/dispatch-host.md). target_clones makes one copy
// of this function per listed ISA and an ifunc resolver that picks one at load time; `flatten` inlines the
// protocol template into each copy, so the whole loop is compiled for that ISA (without it the lambdas stay
// baseline calls). Every copy does the same IEEE additions in the same order (there are no multiplies, so no
// contraction into FMAs), so the bits do not depend on the machine.
#include "ferry/kernels/host/reduce.hpp"

#include "vector_clones.hpp"

namespace ferry::kernels::host {

FERRY_VECTOR_CLONES void reduce_rows(const protocol::ReduceRows& job) {
  protocol::reduce_rows(job);
}

}  // namespace ferry::kernels::host
