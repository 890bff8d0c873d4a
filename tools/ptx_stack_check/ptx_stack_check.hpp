// A check over the PTX nvcc makes: no access in the global state space (ld.global, st.global, atom.global,
// red.global, prefetch.global, cp.async ... any variant) may take an address derived from the thread's stack.
// A generic pointer to a local variable (%SP, %SPL, cvta.local, __local_depot) is not a global address: a
// global access through it faults with an illegal address, sticky for the whole process. It happens when code
// that assumes global memory (inline `ld.global` in a copy routine) is handed the address of a local object.
//
// The analysis is per function and flow-insensitive: a register is "from the stack" when any instruction that
// writes it reads a register or symbol that is (mov, add, cvta, selp, ... all propagate; a value loaded from
// memory does not, so a global pointer spilled to the stack and reloaded is fine). Pointers that travel
// through memory or function parameters are not followed: nvcc inlines the executor's device code, and the
// check is there to catch the pattern nvcc emits when it does.
#pragma once

#include <string>
#include <string_view>
#include <vector>

namespace ferry::tools::ptx_stack_check {

struct Finding {
  std::string function;
  int line = 0;             // 1-based, in the PTX text
  std::string instruction;  // as written, whitespace collapsed
  std::string address;      // the bracketed operand that comes from the stack
};

struct Scan {
  int functions = 0;        // with a body
  int global_accesses = 0;  // instructions in the global state space that were checked
  std::vector<Finding> findings;
};

// Scans one PTX module (the text nvcc -ptx writes).
Scan scan_ptx(std::string_view ptx);

// "FILE:LINE: in FUNCTION: INSTRUCTION: address ADDRESS comes from the stack"
std::string describe(const Finding& finding, const std::string& file);

}  // namespace ferry::tools::ptx_stack_check
