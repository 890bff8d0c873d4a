// `ferry probe overlap`: how much of dispatch/combine hides behind compute on this cluster
// (overlap_probe.hpp) and what a pipeline schedule's op order reaches with it (schedule_probe.hpp).
#pragma once

#include <CLI/CLI.hpp>

namespace ferry::tools::probe {

void register_overlap(CLI::App& probe, int& exit_code);

}  // namespace ferry::tools::probe
