// ferry's errors as Python exceptions. Every ferry::Error becomes a ferry.FerryError subclass chosen by its
// code, carrying ferry's message and the code's name (.code):
//   invalid_argument -> ferry.InvalidArgument (also a ValueError): bad input, refused before communicating
//   peer_failure     -> ferry.PeerFailure: a peer died or went away; .rank names it when the message does
//   timeout          -> ferry.Timeout (also the built-in TimeoutError)
//   unsupported      -> ferry.Unsupported (also a NotImplementedError)
//   anything else    -> ferry.FerryError (a RuntimeError)
#pragma once

#include <pybind11/pybind11.h>

#include <optional>
#include <string>

namespace ferry::python {

// The rank a peer-failure message names ("rank 3 (pid ...", "rank 3 (node 1)"), if any.
std::optional<int> peer_rank_in(const std::string& message);

void register_errors(pybind11::module_& module);

}  // namespace ferry::python
