// What every benchmark report records about where and when it ran (docs/perf figures need machine and date).
#pragma once

#include <nlohmann/json.hpp>
#include <string>

namespace ferry::tools {

// {"hostname", "nproc", "cpu", "kernel"} of this machine.
nlohmann::json machine_info();
// The current time in UTC, "2026-11-20T13:05:00Z".
std::string now_iso8601();

}  // namespace ferry::tools
