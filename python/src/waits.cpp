#include "waits.hpp"

namespace ferry::python {

namespace py = pybind11;

void wait_until(const std::function<bool(Duration)>& ready) {
  while (true) {
    bool done = false;
    {
      py::gil_scoped_release release;
      done = ready(kSignalPoll);
    }
    if (done) return;
    if (PyErr_CheckSignals() != 0) throw py::error_already_set();
  }
}

void wait_interruptibly(const Event& event) {
  wait_until([&event](Duration timeout) { return event.wait_for(timeout); });
  py::gil_scoped_release release;
  event.wait();  // finished: returns at once, or throws the operation's error
}

}  // namespace ferry::python
