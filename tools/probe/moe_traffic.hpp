// The all-to-all of one MoE layer for probes that time it next to compute: a Buffer over the whole group and
// one fixed synthetic routing (the options of `ferry bench dispatch`), dispatched and combined on request.
// Combine returns the received rows unchanged, as an expert that copies would.
#pragma once

#include "bench/dispatch_inputs.hpp"
#include "bench/dispatch_options.hpp"
#include "ferry/buffer.hpp"
#include "ferry/group.hpp"

namespace ferry::tools::probe {

class MoeTraffic {
 public:
  // Collective (builds the Buffer). Throws invalid_argument for a routing the job cannot hold.
  MoeTraffic(Group& group, const bench::DispatchBenchOptions& options);

  Pending<DispatchResult> dispatch();

  // A combine in flight and the input it reads (kept alive until the combine is waited for).
  struct PendingCombine {
    Tensor y;
    Pending<CombineResult> pending;
    CombineResult& wait() { return pending.wait(); }
  };
  PendingCombine combine(const DispatchResult& got);

  // One dispatch and its combine, waited for.
  void round_trip();
  // Collective: `count` round trips after a barrier; seconds per round trip on this rank.
  double time_round_trips(int count, const std::string& name);

 private:
  Group& group_;
  bench::DispatchBenchOptions options_;
  bench::RankInputs inputs_;
  std::unique_ptr<Buffer> buffer_;
  std::unique_ptr<Layout> layout_;
};

}  // namespace ferry::tools::probe
