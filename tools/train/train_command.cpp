// `ferry train` (stub: filled in by the trainer work).
#include "commands.hpp"

namespace ferry::tools {

void register_train(CLI::App& app, int& exit_code) {
  (void)app;
  (void)exit_code;
}

}  // namespace ferry::tools
