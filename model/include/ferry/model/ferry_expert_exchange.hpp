// ExpertExchange over ferry's dispatch/combine: the routed experts are spread over the ranks of a
// ferry::Buffer (rank r owns experts [r·E/R, (r+1)·E/R), ferry's layout), tokens travel as fp32 rows.
//
//   forward:  dispatch = ferry dispatch, then the received rows regrouped by local expert (ExpertBatch);
//             combine  = the local experts' rows summed per received token, then ferry combine.
//   backward: combine_backward  = a cached ferry dispatch of ∂L/∂y along the same handle;
//             dispatch_backward = ferry combine of [∂x | ∂w] rows: K extra columns carry ∂L/∂w of slot k,
//             written only by the rank that owns the slot's expert (zeros elsewhere), so the sum is exact.
//
// Every call waits for its ferry operation (bounded by the Buffer's Config::timeout) before returning, so the
// caller's pointers need only live for the call. All MoE layers of a model may share one Buffer: every rank
// issues the same sequence of operations, which is what ferry requires.
#pragma once

#include <cstdint>
#include <memory>
#include <vector>

#include "ferry/buffer.hpp"
#include "ferry/config.hpp"
#include "ferry/model/config.hpp"
#include "ferry/model/expert_exchange.hpp"

namespace ferry::model {

// A Buffer config sized for the model's MoE layers on a cluster of num_nodes nodes: rows of dim + topk
// values (dispatch_backward's extra columns), the router's node limit (max_groups) as max_nodes, few channels
// (CPU runs share a handful of cores).
ferry::Config expert_exchange_config(const ModelConfig& model, int num_nodes);

class FerryExpertExchange final : public ExpertExchange<float> {
 public:
  // num_experts must be a multiple of the buffer's ranks. The buffer is shared with other layers.
  FerryExpertExchange(std::shared_ptr<ferry::Buffer> buffer, int num_experts);

  int num_experts() const override { return num_experts_; }
  int first_local_expert() const override { return first_local_; }
  int num_local_experts() const override { return num_local_; }

  std::unique_ptr<ExchangeHandle> dispatch(const float* x, int dim, const int* expert, const float* weight,
                                           int tokens, int topk, ExpertBatch<float>& received) override;
  void combine(const ExchangeHandle& handle, const float* rows, float* y) override;
  void combine_backward(const ExchangeHandle& handle, const float* dy, float* drows) override;
  void dispatch_backward(const ExchangeHandle& handle, const float* dx_rows, const float* dweight_rows,
                         float* dx, float* dweight) override;

 private:
  std::shared_ptr<ferry::Buffer> buffer_;
  int num_experts_;
  int first_local_;
  int num_local_;
  std::vector<std::int64_t> topk_idx_;  // scratch: the routing as ferry takes it
  std::vector<float> send_;             // scratch: rows handed to ferry combine
};

}  // namespace ferry::model
