#include "probe/moe_traffic.hpp"

#include <chrono>

#include "bench/dispatch_request.hpp"
#include "bench/routing_gen.hpp"

namespace ferry::tools::probe {

MoeTraffic::MoeTraffic(Group& group, const bench::DispatchBenchOptions& options)
    : group_(group), options_(options) {
  const bench::RoutingSpec spec = bench::routing_spec(options, group.world_size(), group.local_size());
  bench::validate(spec);
  bench::make_inputs(options, spec, group.rank(), inputs_);
  buffer_ = std::make_unique<Buffer>(group, bench::dispatch_config(options));
  layout_ = std::make_unique<Layout>(buffer_->get_layout(inputs_.view.topk_idx, options.experts));
}

Pending<DispatchResult> MoeTraffic::dispatch() {
  return buffer_->dispatch(inputs_.view, *layout_);
}

MoeTraffic::PendingCombine MoeTraffic::combine(const DispatchResult& got) {
  Tensor y = options_.fp8 ? bench::dequantized_rows(got, options_.hidden) : got.recv_x;
  auto pending = buffer_->combine(y.view(), got.handle);
  return {std::move(y), std::move(pending)};
}

void MoeTraffic::round_trip() {
  auto dispatched = dispatch();
  combine(dispatched.wait()).wait();
}

double MoeTraffic::time_round_trips(int count, const std::string& name) {
  group_.barrier(name);
  const auto start = std::chrono::steady_clock::now();
  for (int i = 0; i < count; ++i) round_trip();
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count() / count;
}

}  // namespace ferry::tools::probe
