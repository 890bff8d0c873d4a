// `ferry bench dispatch` and `ferry bench combine`: random node-limited routings through ferry's Buffer.
#pragma once

#include <CLI/CLI.hpp>

namespace ferry::tools {

// Adds the dispatch and combine subcommands to `ferry bench`.
void register_dispatch_bench(CLI::App& bench, int& exit_code);

}  // namespace ferry::tools
