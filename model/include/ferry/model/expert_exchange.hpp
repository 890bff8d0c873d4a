// How routed tokens reach their experts and come back: the seam between the MoE math and expert parallelism.
//
// The MoE layer routes, then asks an ExpertExchange to *dispatch* token rows to the experts, runs the experts
// it holds on what arrived, and asks the exchange to *combine* the results back into token order. Backward
// runs the same seams in reverse: combine_backward delivers ∂L/∂y rows to the experts, dispatch_backward
// brings ∂L/∂x rows and ∂L/∂weight back and sums them per token. The layer never learns where experts live.
//
// Contract (DeepEP's): the expert side multiplies its outputs by the routing weights it received, so combine
// is an unweighted sum, and ∂L/∂weight is computed on the expert side (it needs the expert output). Every sum
// runs in a fixed order, so results are identical on every run.
//
// LocalExpertExchange keeps every expert in this process. A distributed implementation built on ferry's
// dispatch/combine replaces it without touching the layer.
#pragma once

#include <memory>
#include <vector>

namespace ferry::model {

// Token rows as an expert-holding rank receives them: grouped by local expert, ordered by (source, token).
template <typename T>
struct ExpertBatch {
  int dim = 0;
  std::vector<int>
      expert_offsets;     // [local experts + 1]: rows of local expert j are [offsets[j], offsets[j+1])
  std::vector<T> x;       // [rows, dim]
  std::vector<T> weight;  // [rows]: the routing weight of that (token, expert) pair

  int rows() const { return expert_offsets.empty() ? 0 : expert_offsets.back(); }
};

// What a dispatch remembers so that combine and both backward steps can retrace it (DeepEP's handle).
class ExchangeHandle {
 public:
  virtual ~ExchangeHandle() = default;
};

template <typename T>
class ExpertExchange {
 public:
  virtual ~ExpertExchange() = default;

  virtual int num_experts() const = 0;         // all routed experts of the layer
  virtual int first_local_expert() const = 0;  // the experts this process computes: [first, first + local)
  virtual int num_local_experts() const = 0;

  // x [tokens, dim]; expert [tokens, topk] global expert ids (-1 = none); weight [tokens, topk].
  virtual std::unique_ptr<ExchangeHandle> dispatch(const T* x, int dim, const int* expert, const T* weight,
                                                   int tokens, int topk, ExpertBatch<T>& received) = 0;
  // y [tokens, dim] += the rows (already weighted by the expert side) of every (token, expert) pair.
  virtual void combine(const ExchangeHandle& handle, const T* rows, T* y) = 0;
  // rows [received rows, dim] = dy of the token each row came from.
  virtual void combine_backward(const ExchangeHandle& handle, const T* dy, T* drows) = 0;
  // dx [tokens, dim] += Σ rows of the token; dweight [tokens, topk] += the scalar of each (token, expert)
  // pair.
  virtual void dispatch_backward(const ExchangeHandle& handle, const T* dx_rows, const T* dweight_rows, T* dx,
                                 T* dweight) = 0;
};

template <typename T>
class LocalExpertExchange final : public ExpertExchange<T> {
 public:
  explicit LocalExpertExchange(int num_experts);

  int num_experts() const override { return num_experts_; }
  int first_local_expert() const override { return 0; }
  int num_local_experts() const override { return num_experts_; }

  std::unique_ptr<ExchangeHandle> dispatch(const T* x, int dim, const int* expert, const T* weight,
                                           int tokens, int topk, ExpertBatch<T>& received) override;
  void combine(const ExchangeHandle& handle, const T* rows, T* y) override;
  void combine_backward(const ExchangeHandle& handle, const T* dy, T* drows) override;
  void dispatch_backward(const ExchangeHandle& handle, const T* dx_rows, const T* dweight_rows, T* dx,
                         T* dweight) override;

 private:
  int num_experts_;
};

}  // namespace ferry::model
