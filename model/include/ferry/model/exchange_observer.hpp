// The seam through which a pipeline executor overlaps one micro-batch's expert all-to-all with another's
// computation.
//
// An ExpertExchange that communicates (FerryExpertExchange) tells this thread's observer when it has issued
// an operation and before it waits for it (issued), and once the wait returned (finished, with the Event
// whose timestamps say when the operation really ran). Between the two, the observer may hand the CPU to the
// other half of an overlapped F&B pair; that is DualPipe's interleaving: attn(F) ∥ combine(B),
// mlp(B) ∥ dispatch(F), mlp(F) ∥ dispatch(B), attn(B) ∥ combine(F). Without an observer nothing changes.
#pragma once

#include "ferry/buffer.hpp"

namespace ferry::model {

// The four collective operations of an MoE layer, named as a timeline shows them.
enum class ExchangeOp {
  dispatch,           // forward dispatch: "dispatch(F)"
  combine,            // forward combine: "combine(F)"
  combine_backward,   // ∂y to the experts (a cached dispatch): "combine(B)"
  dispatch_backward,  // ∂x and ∂w back to the tokens (a combine): "dispatch(B)"
};
const char* to_string(ExchangeOp op);

class ExchangeObserver {
 public:
  virtual ~ExchangeObserver() = default;
  // `op` is in flight; other work may run on this thread (or another) before the exchange waits for it.
  virtual void issued(ExchangeOp op) = 0;
  // The exchange's wait for `op` returned; event.times() says when it ran.
  virtual void finished(ExchangeOp op, const ferry::Event& event) = 0;
};

// This thread's observer, or null.
ExchangeObserver* exchange_observer();

// Installs `observer` on this thread for the scope's lifetime (restoring the previous one after).
class ScopedExchangeObserver {
 public:
  explicit ScopedExchangeObserver(ExchangeObserver* observer);
  ~ScopedExchangeObserver();
  ScopedExchangeObserver(const ScopedExchangeObserver&) = delete;
  ScopedExchangeObserver& operator=(const ScopedExchangeObserver&) = delete;

 private:
  ExchangeObserver* previous_;
};

// What FerryExpertExchange does with every operation: tell the observer, wait, tell it again.
template <typename Result>
Result& await_exchange(ExchangeOp op, ferry::Pending<Result>& pending) {
  ExchangeObserver* observer = exchange_observer();
  if (observer) observer->issued(op);
  Result& result = pending.wait();
  if (observer) observer->finished(op, pending.event());
  return result;
}

}  // namespace ferry::model
