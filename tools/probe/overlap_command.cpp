#include "probe/overlap_command.hpp"

namespace ferry::tools::probe {

void register_overlap(CLI::App&, int&) {}

}  // namespace ferry::tools::probe
