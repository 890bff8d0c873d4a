// `ferry bench gpu-copy` and `ferry bench gpu-gemm`: the physical bounds that GPU figures are read against.
#pragma once

#include <CLI/CLI.hpp>

namespace ferry::tools {

// Adds the gpu-copy and gpu-gemm subcommands to `ferry bench`.
void register_gpu_bench(CLI::App& bench, int& exit_code);

}  // namespace ferry::tools
