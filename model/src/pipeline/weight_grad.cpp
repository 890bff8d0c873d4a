#include "ferry/model/pipeline/weight_grad.hpp"

#include "ferry/model/gemm.hpp"

namespace ferry::model::pipeline {

namespace {
thread_local WeightGradQueue* active_queue = nullptr;
}

void WeightGradQueue::defer_linear(float* dw, const float* x, const float* dy, int n, int in, int out) {
  const std::size_t x_size = static_cast<std::size_t>(n) * in, dy_size = static_cast<std::size_t>(n) * out;
  work_.push_back(
      Linear{dw, std::vector<float>(x, x + x_size), std::vector<float>(dy, dy + dy_size), n, in, out});
}

void WeightGradQueue::run() {
  for (Linear& w : work_)
    gemm<float>(true, false, w.in, w.out, w.n, 1.0f, w.x.data(), w.in, w.dy.data(), w.out, 1.0f, w.dw, w.out);
  work_.clear();
}

WeightGradQueue* deferred_weight_grads() {
  return active_queue;
}

DeferWeightGrads::DeferWeightGrads(WeightGradQueue& queue) : previous_(active_queue) {
  active_queue = &queue;
}
DeferWeightGrads::~DeferWeightGrads() {
  active_queue = previous_;
}

}  // namespace ferry::model::pipeline
