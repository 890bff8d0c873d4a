// Zero-bubble pipelines split a backward pass in two: B computes the input gradients the previous stage is
// waiting for, W computes the weight gradients nobody waits for, later, where the schedule has a hole.
//
// Every weight matrix's gradient in the model is one GEMM inside linear_backward(). While a DeferWeightGrads
// scope is open on a thread, linear_backward() computes ∂x at once and queues ∂W (with copies of x and ∂y,
// whose buffers the next backward reuses) in the given WeightGradQueue; run() does the queued GEMMs in order.
// Vector parameters (norm weights), the embedding and the router's small gate stay in B: they are cheap.
// This is what DeepSeek's DualPipe reference does with its WeightGradStore.
#pragma once

#include <cstddef>
#include <functional>
#include <vector>

namespace ferry::model::pipeline {

class WeightGradQueue {
 public:
  // dw [in, out] += x^T · dy for x [n, in], dy [n, out]; x and dy are copied.
  void defer_linear(float* dw, const float* x, const float* dy, int n, int in, int out);
  // Runs and forgets everything queued, in the order it was queued.
  void run();
  bool empty() const { return work_.empty(); }
  std::size_t size() const { return work_.size(); }

 private:
  struct Linear {
    float* dw;
    std::vector<float> x, dy;
    int n, in, out;
  };
  std::vector<Linear> work_;
};

// The queue linear_backward() defers into on this thread, or null.
WeightGradQueue* deferred_weight_grads();

class DeferWeightGrads {
 public:
  explicit DeferWeightGrads(WeightGradQueue& queue);
  ~DeferWeightGrads();
  DeferWeightGrads(const DeferWeightGrads&) = delete;
  DeferWeightGrads& operator=(const DeferWeightGrads&) = delete;

 private:
  WeightGradQueue* previous_;
};

}  // namespace ferry::model::pipeline
