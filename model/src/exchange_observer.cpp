#include "ferry/model/exchange_observer.hpp"

namespace ferry::model {

namespace {
thread_local ExchangeObserver* active_observer = nullptr;
}

const char* to_string(ExchangeOp op) {
  switch (op) {
    case ExchangeOp::dispatch:
      return "dispatch(F)";
    case ExchangeOp::combine:
      return "combine(F)";
    case ExchangeOp::combine_backward:
      return "combine(B)";
    case ExchangeOp::dispatch_backward:
      return "dispatch(B)";
  }
  return "?";
}

ExchangeObserver* exchange_observer() {
  return active_observer;
}

ScopedExchangeObserver::ScopedExchangeObserver(ExchangeObserver* observer) : previous_(active_observer) {
  active_observer = observer;
}
ScopedExchangeObserver::~ScopedExchangeObserver() {
  active_observer = previous_;
}

}  // namespace ferry::model
