// ferry::Config as ferry.FerryConfig, the job environment as ferry reads it, and buffer_size_hint.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <chrono>
#include <cstdlib>

#include "ferry/config.hpp"
#include "ferry/group.hpp"
#include "ferry/version.hpp"
#include "runtime_binding.hpp"

namespace ferry::python {

namespace py = pybind11;

namespace {

// The job's shape as ferry reads the launcher's variables (FERRY_*, torchrun, Open MPI, Slurm). Only the
// shape is wanted here (the Python package bootstraps its own store through the caller's process group),
// so a missing FERRY_SECRET is not an error.
py::dict job_from_environment() {
  JobEnv job = resolve_job_env([](const char* name) -> std::optional<std::string> {
    const char* value = std::getenv(name);
    if (value == nullptr) {
      if (std::string_view(name) == "FERRY_SECRET") return std::string("not-needed-for-the-shape");
      return std::nullopt;
    }
    return std::string(value);
  });
  py::dict out;
  out["launcher"] = to_string(job.launcher);
  out["rank"] = job.rank;
  out["world_size"] = job.world_size;
  out["local_rank"] = job.local_rank;
  out["local_size"] = job.local_size;
  out["store_host"] = job.store_host;
  out["node_address"] = job.node_address;
  return out;
}

}  // namespace

void register_config(py::module_& module) {
  py::class_<Config>(
      module, "FerryConfig",
      "ferry's Buffer settings (ferry::Config): SM budget, the largest hidden size and top-k the "
      "buffer is sized for, ring sizes and chunks, the timeout. The JSON form is what `ferry bench "
      "dispatch --sweep --save-config` writes.")
      .def(py::init<>())
      .def_readwrite("num_sms", &Config::num_sms, "SM budget; channels = num_sms / 2")
      .def_readwrite("max_nodes", &Config::max_nodes, "a token may touch at most this many nodes")
      .def_readwrite("max_hidden", &Config::max_hidden,
                     "the largest hidden size any dispatch or combine uses")
      .def_readwrite("max_topk", &Config::max_topk, "the largest number of experts per token")
      .def_readwrite("rdma_ring_slots", &Config::rdma_ring_slots, "slots per (channel, remote node) ring")
      .def_readwrite("rdma_chunk", &Config::rdma_chunk, "messages per fabric put")
      .def_readwrite("nvl_ring_slots", &Config::nvl_ring_slots, "slots per (channel, local rank) ring")
      .def_readwrite("nvl_chunk", &Config::nvl_chunk, "messages moved per node ring before publishing")
      .def_readwrite("buffer_bytes", &Config::buffer_bytes, "registered bytes per rank; 0: the size hint")
      .def_readwrite("host_workers", &Config::host_workers, "host backend: worker threads; 0: automatic")
      .def_property(
          "timeout_s", [](const Config& c) { return std::chrono::duration<double>(c.timeout).count(); },
          [](Config& c, double seconds) {
            c.timeout = std::chrono::duration_cast<Duration>(std::chrono::duration<double>(seconds));
          },
          "an operation fails when a channel makes no progress for this long (seconds)")
      .def("num_channels", &Config::num_channels)
      .def("validate", &Config::validate, py::arg("num_nodes"), py::arg("local_size"),
           "Raises ValueError naming the field when this config cannot work for the cluster shape.")
      .def_static("from_json", &Config::from_json, py::arg("text"),
                  "Reads the JSON form; unknown keys and wrong types are refused by name (ValueError).")
      .def_static("load", &Config::load, py::arg("path"),
                  "Reads a JSON file (e.g. from ferry bench --sweep).")
      .def("to_json", &Config::to_json)
      .def("save", &Config::save, py::arg("path"))
      .def("__repr__", [](const Config& c) { return "FerryConfig(" + c.to_json() + ")"; });
  module.def("buffer_size_hint", &buffer_size_hint, py::arg("config"), py::arg("num_nodes"),
             py::arg("local_size"),
             "Bytes of the registered buffer each rank needs for `config` on num_nodes x local_size ranks.");
  module.def(
      "job_from_environment", &job_from_environment,
      "The job's shape as ferry reads the launcher's environment: launcher, rank, world_size, local_rank, "
      "local_size, store_host, node_address. Raises ValueError naming an inconsistent variable.");
  module.attr("__version__") = version();
  module.def("built_with_cuda", &built_with_cuda, "Whether this ferry was built with its CUDA backend.");
}

}  // namespace ferry::python
