// Exact verification of one rank's dispatch and combine results in the benchmark, against references every
// rank rebuilds for itself: the routing of every rank (from the seed) and the rows (from source rank and
// token).
#pragma once

#include <string>
#include <vector>

#include "bench/routing_gen.hpp"
#include "ferry/buffer.hpp"

namespace ferry::bench {

// "" when `got` is exactly what `rank` must receive: the rows of every (source rank, token) that names one of
// its experts, in (source rank, token) order, their values, scales, local topk ids and weights, and the
// tokens per local expert. Otherwise the first mismatch, naming rank, row and column.
std::string check_dispatch(const RoutingSpec& spec, const std::vector<Routing>& routings, int rank,
                           std::int64_t hidden, bool fp8, const DispatchResult& got);

// "" when out[t] (bf16) equals x[t] times the number of distinct ranks token t went to, for every token of
// `rank` (the combine of rows that every receiver returned unchanged). Otherwise the first mismatch.
std::string check_combine(const RoutingSpec& spec, const Routing& routing, int rank, std::int64_t hidden,
                          const Tensor& out);

}  // namespace ferry::bench
