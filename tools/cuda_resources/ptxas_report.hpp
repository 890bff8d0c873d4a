// Resource checks of CUDA kernels without a GPU: parse what `nvcc -Xptxas -v` printed for each kernel and
// architecture, and check it against the launch shape the kernel's author declared (threads per block, blocks
// that must fit on one SM, dynamic shared memory). Fails on any register spill and on a shape that cannot
// place its blocks. Used by the `ferry-cuda-resources` checker that cmake/FerryCudaResources.cmake registers
// as a test.
#pragma once

#include <istream>
#include <string>
#include <vector>

namespace ferry::tools::cuda_resources {

// One function as ptxas reported it for one architecture.
struct FunctionUsage {
  std::string mangled;
  std::string name;    // demangled
  std::string arch;    // "sm_80", "sm_90a"
  bool entry = false;  // a kernel; false for a device function that was not inlined
  int registers = 0;
  int barriers = 0;
  long shared_bytes = 0;  // static shared memory
  long stack_bytes = 0;
  long spill_store_bytes = 0;
  long spill_load_bytes = 0;
};

// Parses ptxas's "-v" lines (others are skipped). Throws std::runtime_error when a resource line comes before
// any function it could belong to.
std::vector<FunctionUsage> parse_ptxas_log(std::istream& in);

// A kernel's declared launch: `threads` per block, at least `blocks_per_sm` blocks resident on each SM (1 for
// a grid of num_sms blocks; ranks for a cooperative launch of ranks x num_sms), `dynamic_shared_bytes` of
// dynamic shared memory per block.
struct KernelShape {
  std::string name;  // the kernel's unqualified name, template arguments dropped: "copy_kernel"
  int threads = 0;
  int blocks_per_sm = 0;
  long dynamic_shared_bytes = 0;
  int line = 0;  // in the shapes file, for messages
};

// A shapes file: one kernel a line, "name threads blocks_per_sm dynamic_shared_bytes"; '#' starts a comment.
// Throws std::runtime_error naming file and line for a malformed line or a name given twice.
std::vector<KernelShape> parse_shapes(std::istream& in, const std::string& file_name);

// The unqualified name of a demangled function: "copy_kernel" from
// "void ns::(anonymous namespace)::copy_kernel<4>(uint4 const*, uint4*, unsigned long)".
std::string base_name(const std::string& demangled);

// Blocks of a kernel with `usage` launched as `shape` that fit on one SM of `arch`, by NVIDIA's occupancy
// calculator (cuda_occupancy.h) with the limits of an A100 (sm_80) or an H100/H200 (sm_90, sm_90a); 0 when
// the shape cannot launch at all. Throws std::runtime_error for another arch.
int blocks_that_fit(const FunctionUsage& usage, const KernelShape& shape);

struct CheckOutcome {
  std::vector<std::string> failures;  // empty: every check passed
  std::string table;                  // markdown, one row per kernel and arch
};

// Every kernel needs a shape line and must show up for every arch in `archs`; no function may spill; each
// kernel's blocks_per_sm must fit. A shape line that matches no kernel is a failure too (a stale table).
CheckOutcome check_kernels(const std::vector<FunctionUsage>& usage, const std::vector<KernelShape>& shapes,
                           const std::vector<std::string>& archs, const std::string& shapes_file);

}  // namespace ferry::tools::cuda_resources
