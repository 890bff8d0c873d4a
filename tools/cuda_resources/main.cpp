// ferry-cuda-resources: checks ptxas resource usage against declared kernel shapes (ptxas_report.hpp).
//
//   ferry-cuda-resources --shapes kernels.shapes --archs sm_80,sm_90a [--report out.md] OBJECT...
//
// For every OBJECT it reads OBJECT.ptxas.txt, which cmake/ptxas_log.sh writes while the object compiles.
// Prints the table, writes it (and any failures) to --report, and exits 1 when a check fails, 2 on bad usage.
#include <cstdio>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "cuda_resources/ptxas_report.hpp"

namespace cr = ferry::tools::cuda_resources;

namespace {

int usage(const std::string& problem) {
  std::cerr << "ferry-cuda-resources: " << problem
            << "\nusage: ferry-cuda-resources --shapes FILE --archs sm_80,sm_90a [--report FILE] OBJECT...\n";
  return 2;
}

std::vector<std::string> split(const std::string& text, char separator) {
  std::vector<std::string> out;
  std::stringstream items(text);
  for (std::string item; std::getline(items, item, separator);) {
    if (!item.empty()) out.push_back(item);
  }
  return out;
}

}  // namespace

int main(int argc, char** argv) {
  std::string shapes_file, report_file;
  std::vector<std::string> archs, objects;
  for (int i = 1; i < argc; ++i) {
    const std::string argument = argv[i];
    if ((argument == "--shapes" || argument == "--archs" || argument == "--report") && i + 1 == argc) {
      return usage(argument + " needs a value");
    }
    if (argument == "--shapes") {
      shapes_file = argv[++i];
    } else if (argument == "--archs") {
      archs = split(argv[++i], ',');
    } else if (argument == "--report") {
      report_file = argv[++i];
    } else {
      objects.push_back(argument);
    }
  }
  if (shapes_file.empty() || archs.empty() || objects.empty())
    return usage("--shapes, --archs and an object are needed");

  try {
    std::ifstream shapes_in(shapes_file);
    if (!shapes_in) return usage("cannot read " + shapes_file);
    const auto shapes = cr::parse_shapes(shapes_in, shapes_file);
    std::vector<cr::FunctionUsage> usage_all;
    std::vector<std::string> missing;
    for (const auto& object : objects) {
      std::ifstream log(object + ".ptxas.txt");
      if (!log) {
        missing.push_back("no ptxas log " + object + ".ptxas.txt (compiled through cmake/ptxas_log.sh?)");
        continue;
      }
      auto usage = cr::parse_ptxas_log(log);
      usage_all.insert(usage_all.end(), usage.begin(), usage.end());
    }
    auto outcome = cr::check_kernels(usage_all, shapes, archs, shapes_file);
    outcome.failures.insert(outcome.failures.begin(), missing.begin(), missing.end());

    std::ostringstream report;
    report << outcome.table;
    for (const auto& failure : outcome.failures) report << "\nFAILED: " << failure << "\n";
    std::cout << report.str();
    if (!report_file.empty()) {
      std::ofstream out(report_file);
      out << report.str();
      if (!out) std::cerr << "ferry-cuda-resources: cannot write " << report_file << "\n";
    }
    if (!outcome.failures.empty()) return 1;
    std::cout << "ok: " << usage_all.size()
              << " functions, every kernel fits its declared shape, no spills\n";
    return 0;
  } catch (const std::exception& e) {
    std::cerr << "ferry-cuda-resources: " << e.what() << "\n";
    return 1;
  }
}
