// ferry-ptx-stack-check: fails when a global-space access in the given PTX takes an address from the stack
// (ptx_stack_check.hpp).
//
//   ferry-ptx-stack-check [--expect-findings] FILE.ptx...
//
// Exits 0 when every file has at least one function and nothing was found, 1 when something was found (or a
// file holds no function: a check that reads nothing proves nothing), 2 on bad usage. --expect-findings turns
// it around for the check's own test: exit 0 only when every file has a finding.
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "ptx_stack_check/ptx_stack_check.hpp"

namespace check = ferry::tools::ptx_stack_check;

int main(int argc, char** argv) {
  bool expect_findings = false;
  std::vector<std::string> files;
  for (int i = 1; i < argc; ++i) {
    const std::string argument = argv[i];
    if (argument == "--expect-findings") {
      expect_findings = true;
    } else if (!argument.empty() && argument[0] == '-') {
      std::cerr << "ferry-ptx-stack-check: unknown option " << argument
                << "\nusage: ferry-ptx-stack-check [--expect-findings] FILE.ptx...\n";
      return 2;
    } else {
      files.push_back(argument);
    }
  }
  if (files.empty()) {
    std::cerr << "ferry-ptx-stack-check: no PTX file given\nusage: ferry-ptx-stack-check [--expect-findings] "
                 "FILE.ptx...\n";
    return 2;
  }
  bool failed = false;
  for (const std::string& file : files) {
    std::ifstream in(file);
    if (!in) {
      std::cerr << "ferry-ptx-stack-check: cannot read " << file << "\n";
      return 2;
    }
    std::ostringstream text;
    text << in.rdbuf();
    const check::Scan scan = check::scan_ptx(text.str());
    std::cout << file << ": " << scan.functions << " functions, " << scan.global_accesses
              << " global accesses checked, " << scan.findings.size() << " from the stack\n";
    for (const check::Finding& finding : scan.findings) std::cout << check::describe(finding, file) << "\n";
    if (scan.functions == 0) {
      std::cout << "FAILED: " << file << " holds no function with a body\n";
      failed = true;
    } else if (expect_findings == scan.findings.empty()) {
      std::cout << "FAILED: " << file
                << (expect_findings ? ": the deliberately bad code was not flagged"
                                    : ": global accesses through stack addresses (see above)")
                << "\n";
      failed = true;
    }
  }
  return failed ? 1 : 0;
}
