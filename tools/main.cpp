// `ferry`: launch an emulated cluster, inspect the topology, benchmark, train and read pipeline traces.
#include <cstdio>
#include <exception>

#include "commands.hpp"
#include "ferry/core/error.hpp"

int main(int argc, char** argv) {
  CLI::App app{"ferry: MoE expert-parallel dispatch/combine over RDMA and NVLink"};
  app.require_subcommand(1);
  int exit_code = 0;
  ferry::tools::register_launch(app, exit_code);
  ferry::tools::register_topo(app, exit_code);
  ferry::tools::register_bench(app, exit_code);
  ferry::tools::register_train(app, exit_code);
  ferry::tools::register_trace(app, exit_code);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s\n", e.what());
    return 1;
  }
  return exit_code;
}
