#include "bench/dispatch_request.hpp"

#include <algorithm>
#include <chrono>

#include "bench/dispatch_sweep.hpp"

namespace ferry::bench {

Config dispatch_config(const DispatchBenchOptions& o) {
  Config config;
  config.num_sms = o.num_sms;
  config.max_nodes = o.max_nodes;
  config.max_hidden = static_cast<int>(o.hidden);
  config.max_topk = o.topk;
  config.timeout = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(o.timeout_s));
  if (o.rdma_slots > 0) config.rdma_ring_slots = o.rdma_slots;
  if (o.rdma_chunk > 0) config.rdma_chunk = o.rdma_chunk;
  if (o.nvl_slots > 0) config.nvl_ring_slots = o.nvl_slots;
  if (o.nvl_chunk > 0) config.nvl_chunk = o.nvl_chunk;
  if (o.workers > 0) config.host_workers = o.workers;
  return config;
}

DispatchRequest resolve_request(const DispatchBenchOptions& options) {
  DispatchRequest request;
  request.job = resolve_job_env();
  request.spec = routing_spec(options, request.job.world_size, request.job.local_size);
  validate(request.spec);
  const Config config = dispatch_config(options);
  config.validate(request.job.num_nodes(), request.job.local_size);
  request.configs = {config};
  return request;
}

void add_dispatch_memory(tools::cli::MemoryPlan& plan, const DispatchBenchOptions& o,
                         const DispatchRequest& request, bool with_combine) {
  const auto R = static_cast<std::uint64_t>(request.job.world_size);
  const auto T = static_cast<std::uint64_t>(o.tokens), H = static_cast<std::uint64_t>(o.hidden);
  const auto K = static_cast<std::uint64_t>(o.topk);
  plan.add("input rows", {{"--tokens", T}, {"--hidden", H}, {"B", 2}});
  plan.add("routing", {{"--tokens", T}, {"--topk", K}, {"B", 12}});
  plan.add("received rows", {{"rank(s)", R}, {"--tokens", T}, {"--hidden", H}, {"B", 2}});
  plan.add("received top-k", {{"rank(s)", R}, {"--tokens", T}, {"--topk", K}, {"B", 12}});
  if (with_combine) {
    plan.add("combine input", {{"rank(s)", R}, {"--tokens", T}, {"--hidden", H}, {"B", 2}});
    plan.add("combine output", {{"--tokens", T}, {"--hidden", H}, {"B", 4}});
  }
  if (o.check) plan.add("--check's routings", {{"rank(s)", R}, {"--tokens", T}, {"--topk", K}, {"B", 12}});
  const int nodes = request.job.num_nodes(), local = request.job.local_size;
  std::uint64_t buffer = 0;
  for (const Config& config : request.configs)
    if (config_problem(config, nodes, local).empty())
      buffer = std::max<std::uint64_t>(buffer, buffer_size_hint(config, nodes, local));
  plan.add_bytes("ferry's buffer", buffer, "--num-sms, --hidden, --topk and the ring flags");
}

}  // namespace ferry::bench
