// What a dispatch/combine run (ferry bench dispatch|combine, ferry probe overlap) was asked to do, resolved
// and checked before any work: the job the environment describes, the routing problem on its shape, the
// Configs to run, and the memory a rank needs at most. Any problem throws (cli::before_work makes it a usage
// error naming the flags).
#pragma once

#include <vector>

#include "bench/dispatch_options.hpp"
#include "bench/routing_gen.hpp"
#include "cli/memory_plan.hpp"
#include "ferry/config.hpp"
#include "ferry/group.hpp"

namespace ferry::bench {

struct DispatchRequest {
  JobEnv job;
  RoutingSpec spec;
  std::vector<Config> configs;  // the one the options describe; a sweep replaces it by its points
};

// The ferry::Config the options describe (sizes, SMs, rings, workers, timeout).
Config dispatch_config(const DispatchBenchOptions& options);

// The job from the environment, the routing validated on its shape, dispatch_config() validated on it.
DispatchRequest resolve_request(const DispatchBenchOptions& options);

// What one rank allocates at most: its rows and routing, what it may receive (every rank's tokens, in the
// worst routing), combine's input and output (with_combine), --check's reference routings, and the largest
// buffer of the request's valid Configs.
void add_dispatch_memory(tools::cli::MemoryPlan& plan, const DispatchBenchOptions& options,
                         const DispatchRequest& request, bool with_combine);

}  // namespace ferry::bench
