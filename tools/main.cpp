// `ferry`: launch an emulated cluster, inspect the topology, probe the fabric, benchmark, train and read
// pipeline traces.
#include <exception>

#include "cli/usage.hpp"
#include "commands.hpp"

int main(int argc, char** argv) {
  CLI::App app{"ferry: MoE expert-parallel dispatch/combine over RDMA and NVLink"};
  app.require_subcommand(1);
  int exit_code = 0;
  ferry::tools::register_launch(app, exit_code);
  ferry::tools::register_topo(app, exit_code);
  ferry::tools::register_probe(app, exit_code);
  ferry::tools::register_bench(app, exit_code);
  ferry::tools::register_train(app, exit_code);
  ferry::tools::register_trace(app, exit_code);
  ferry::tools::add_missing_examples(app);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return ferry::tools::cli::report_parse_error(app, e);
  } catch (const std::exception& e) {
    return ferry::tools::cli::report_run_error(app, e);
  }
  return exit_code;
}
