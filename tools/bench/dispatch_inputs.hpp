// One rank's inputs for the dispatch/combine benchmarks and probes: the synthetic routing (routing_gen.hpp)
// and the token rows (dispatch_rows.hpp) as ferry's DispatchInputs, and the combine input made from what a
// dispatch delivered.
#pragma once

#include <cstdint>
#include <vector>

#include "bench/dispatch_options.hpp"
#include "bench/routing_gen.hpp"
#include "ferry/buffer.hpp"

namespace ferry::bench {

struct RankInputs {
  Routing routing;
  std::vector<std::uint8_t> x;  // [T, H] bf16 or fp8 bits
  std::vector<float> scales;    // [T, blocks] when fp8
  DispatchInputs view;          // points into the members above
};

void make_inputs(const DispatchBenchOptions& o, const RoutingSpec& spec, int rank, RankInputs& in);

// Combine input: the received rows unchanged, as bf16 (fp8 rows dequantized, exact for the bench's values).
Tensor dequantized_rows(const DispatchResult& got, std::int64_t hidden);

}  // namespace ferry::bench
