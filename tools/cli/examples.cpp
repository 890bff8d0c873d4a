// Examples for `ferry --help`, `ferry train --help` and `ferry trace --help`. Every other command sets its
// own next to its options (cli::set_examples); train and trace are kept here so that their files stay the
// trainer's.
#include "cli/usage.hpp"
#include "commands.hpp"

namespace ferry::tools {
namespace {

void examples_if_missing(CLI::App& command, std::initializer_list<std::string_view> lines) {
  if (command.get_footer().empty()) cli::set_examples(command, lines);
}

}  // namespace

void add_missing_examples(CLI::App& app) {
  examples_if_missing(app, {
                               "ferry launch --nodes 2 --ranks-per-node 2 -- ferry topo",
                               "ferry launch --nodes 3 --netns --link-gbps 10,10,1 -- ferry probe fabric",
                               "ferry launch --nodes 2 --ranks-per-node 2 -- ferry bench dispatch --sweep",
                               "ferry <command> --help",
                           });
  const auto all = [](CLI::App*) { return true; };
  for (CLI::App* command : app.get_subcommands(all)) {
    if (command->get_name() == "train") {
      examples_if_missing(*command, {
                                        "ferry train --steps 20                      # one process",
                                        "ferry launch --nodes 2 --ranks-per-node 2 -- ferry train --steps 20 "
                                        "--json run.json",
                                        "ferry launch --nodes 2 --ranks-per-node 2 -- ferry train --no-mtp "
                                        "--schedule dualpipe --pp 2 --micro-batches 8 --trace t.json",
                                    });
    } else if (command->get_name() == "trace") {
      examples_if_missing(*command, {
                                        "ferry trace t.json                           # overlap per rank",
                                        "ferry trace t.json --svg timeline.svg --step 2",
                                        "ferry trace t.json --json",
                                    });
    }
  }
}

}  // namespace ferry::tools
