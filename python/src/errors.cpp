#include "errors.hpp"

#include <pybind11/stl.h>

#include <regex>

#include "ferry/core/error.hpp"

namespace ferry::python {

namespace py = pybind11;

namespace {

// Created once at import and kept for the life of the process (the translator may run at any time).
struct ErrorClasses {
  PyObject* base = nullptr;
  PyObject* invalid_argument = nullptr;
  PyObject* peer_failure = nullptr;
  PyObject* timeout = nullptr;
  PyObject* unsupported = nullptr;
};
ErrorClasses classes;

PyObject* make_class(py::module_& module, const char* name, PyObject* bases, const char* doc) {
  const std::string qualified = std::string("ferry.") + name;
  PyObject* type = PyErr_NewExceptionWithDoc(qualified.c_str(), doc, bases, nullptr);
  if (type == nullptr) throw py::error_already_set();
  module.add_object(name, py::reinterpret_borrow<py::object>(type));
  return type;
}

PyObject* class_for(Errc code) {
  switch (code) {
    case Errc::invalid_argument:
      return classes.invalid_argument;
    case Errc::peer_failure:
      return classes.peer_failure;
    case Errc::timeout:
      return classes.timeout;
    case Errc::unsupported:
      return classes.unsupported;
    default:
      return classes.base;
  }
}

void raise(const Error& error) {
  PyObject* type = class_for(error.code());
  py::object instance = py::reinterpret_borrow<py::object>(type)(error.what());
  instance.attr("code") = std::string(to_string(error.code()));
  if (error.code() == Errc::peer_failure) {
    const std::optional<int> rank = peer_rank_in(error.what());
    instance.attr("rank") = rank ? py::object(py::int_(*rank)) : py::object(py::none());
  }
  PyErr_SetObject(type, instance.ptr());
}

}  // namespace

std::optional<int> peer_rank_in(const std::string& message) {
  static const std::regex named_peer(R"(rank (\d+) \((?:pid|node) )");
  std::smatch match;
  if (!std::regex_search(message, match, named_peer)) return std::nullopt;
  return std::stoi(match[1].str());
}

void register_errors(py::module_& module) {
  classes.base = make_class(module, "FerryError", PyExc_RuntimeError,
                            "An error ferry reported; .code names its kind (ferry::Errc).");
  auto bases = [](PyObject* extra) { return py::make_tuple(py::handle(classes.base), py::handle(extra)); };
  classes.invalid_argument =
      make_class(module, "InvalidArgument", bases(PyExc_ValueError).ptr(),
                 "Bad input, refused before any communication; the message names the argument.");
  classes.peer_failure = make_class(module, "PeerFailure", classes.base,
                                    "A peer rank died or became unreachable; .rank is that rank when the "
                                    "message names it (else None). The Buffer cannot be used afterwards.");
  classes.timeout = make_class(module, "Timeout", bases(PyExc_TimeoutError).ptr(),
                               "A wait passed its deadline (Config timeout); the message names what was "
                               "awaited and who is missing. The Buffer cannot be used afterwards.");
  classes.unsupported = make_class(module, "Unsupported", bases(PyExc_NotImplementedError).ptr(),
                                   "The feature is not available in this build or on this machine.");
  py::register_exception_translator([](std::exception_ptr thrown) {
    try {
      if (thrown) std::rethrow_exception(thrown);
    } catch (const Error& error) {
      raise(error);
    }
  });
  module.def("peer_rank_in", &peer_rank_in, py::arg("message"),
             "The rank a peer-failure message names, or None (what ferry.PeerFailure.rank holds).");
}

}  // namespace ferry::python
