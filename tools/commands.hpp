// Every `ferry` subcommand registers itself here; main.cpp only parses and dispatches.
#pragma once

#include <CLI/CLI.hpp>

namespace ferry::tools {

// Each register_* adds a subcommand to `app` whose callback runs it. A command reports failure by throwing
// (ferry::Error or std::exception); main turns that into a message on stderr and a non-zero exit.
// Commands that need a specific exit status (launch propagates its ranks' status) set `exit_code`.
void register_launch(CLI::App& app, int& exit_code);
void register_topo(CLI::App& app, int& exit_code);
void register_bench(CLI::App& app, int& exit_code);
void register_train(CLI::App& app, int& exit_code);
void register_trace(CLI::App& app, int& exit_code);
void register_probe(CLI::App& app, int& exit_code);

// Examples for the commands registered above whose files do not set their own (cli/usage.cpp): the root
// command, `train` and `trace`. Leaves every command that has a footer alone.
void add_missing_examples(CLI::App& app);

}  // namespace ferry::tools
