// What a command will allocate, as products of its flags' values, checked before any work against the
// memory of the machine: a request too large for it is a usage error naming the flags, never std::bad_alloc
// in the middle of a run, nor a product that wrapped around to a small allocation that is then overrun.
// Products saturate (core/checked_math.hpp), so any combination of bounded flags is judged correctly.
//
//   cli::MemoryPlan plan;
//   plan.add("input rows", {{"--tokens", T}, {"--hidden", H}, {"B", 2}});
//   plan.check(cli::usable_memory_bytes(), ranks_on_this_host);
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace ferry::tools::cli {

struct Factor {
  // "--tokens": a flag, printed "--tokens 4096"; anything else is a unit, printed "2 B", "4 ranks".
  std::string label;
  std::uint64_t value = 0;
};

// The product of the factors, saturated at UINT64_MAX.
std::uint64_t product_of(const std::vector<Factor>& factors);
// "--tokens 4096 x --hidden 7168 x 2 B".
std::string describe(const std::vector<Factor>& factors);

class MemoryPlan {
 public:
  // `what` takes the product of `factors` bytes (the last factor is usually the bytes per element).
  void add(std::string what, std::vector<Factor> factors);
  // Bytes known otherwise (a buffer's size from a Config); `flags` names what sets them ("--num-sms").
  void add_bytes(std::string what, std::uint64_t bytes, std::string flags);

  std::uint64_t total() const;
  // Throws Errc::invalid_argument when total() x copies exceeds `available`, naming the largest terms, the
  // flags of the largest, and both sizes. `copies`: the processes that make the same plan on this host
  // (ranks per node).
  void check(std::uint64_t available, std::uint64_t copies) const;

 private:
  struct Term {
    std::string what;
    std::string how;  // "--tokens 4096 x --hidden 7168 x 2 B", or the flags of add_bytes
    std::vector<std::string> flags;
    std::uint64_t bytes = 0;
  };
  std::vector<Term> terms_;
};

// The memory this process may use: the machine's physical memory, or the cgroup's limit when lower.
std::uint64_t usable_memory_bytes();

}  // namespace ferry::tools::cli
