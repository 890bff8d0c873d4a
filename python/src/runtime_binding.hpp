// The objects the Python package drives: a Runtime (one rank's Group and Buffer), the Layout, Handle, Event
// and in-flight operations it returns, and ferry's Config. Only the public C++ API (ferry/*.hpp) is used.
#pragma once

#include <pybind11/pybind11.h>

namespace ferry::python {

void register_config(pybind11::module_& module);
void register_runtime(pybind11::module_& module);

}  // namespace ferry::python
