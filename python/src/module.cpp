// ferry._ferry: the compiled half of the Python package. It binds the public C++ API (runtime/include/ferry)
// and nothing below it; python/ferry/*.py builds DeepEP's Buffer on top.
#include <pybind11/pybind11.h>

#include "dlpack_bridge.hpp"
#include "errors.hpp"
#include "runtime_binding.hpp"

PYBIND11_MODULE(_ferry, module) {
  module.doc() = "ferry's C++ runtime for the Python package `ferry` (use ferry.Buffer, not this module).";
  ferry::python::register_errors(module);
  ferry::python::register_dlpack(module);
  ferry::python::register_config(module);
  ferry::python::register_runtime(module);
  ferry::python::register_low_latency(module);
}
