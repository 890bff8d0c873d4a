// `ferry bench dispatch|combine` (stub: filled in by the dispatch bench work).
#include "bench/dispatch_bench.hpp"

namespace ferry::tools {

void register_dispatch_bench(CLI::App& bench, int& exit_code) {
  (void)bench;
  (void)exit_code;
}

}  // namespace ferry::tools
