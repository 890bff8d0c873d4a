// The objects the Python package drives: a Runtime (one rank's Group and, unless it serves the low-latency
// mode alone, its Buffer), the Layout, Handle, Event and in-flight operations it returns, and ferry's Config.
// Only the public C++ API (ferry/*.hpp) is used.
#pragma once

#include <pybind11/pybind11.h>

#include <memory>

#include "ferry/buffer.hpp"
#include "ferry/group.hpp"

namespace ferry::python {

// Completion of one ferry operation, as Python sees it (ferry._ferry.Event).
struct EventObject {
  Event event;
};

// The Group of a ferry._ferry.Runtime (for the low-latency buffer built beside it); invalid_argument when the
// Runtime was closed or abandoned.
std::shared_ptr<Group> group_of_runtime(pybind11::handle runtime);

// Where a ferry._ferry.Runtime's tensors live: its Buffers run on that device (CUDA: GPU cuda_device).
struct RuntimeDevice {
  bool cuda = false;
  int cuda_device = 0;
};
RuntimeDevice device_of_runtime(pybind11::handle runtime);

void register_config(pybind11::module_& module);
void register_runtime(pybind11::module_& module);
void register_low_latency(pybind11::module_& module);

}  // namespace ferry::python
