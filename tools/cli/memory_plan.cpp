#include "cli/memory_plan.hpp"

#include <unistd.h>

#include <algorithm>
#include <fstream>

#include "ferry/core/checked_math.hpp"
#include "ferry/core/error.hpp"
#include "ferry/core/file_read.hpp"

namespace ferry::tools::cli {
namespace {

bool is_flag(const std::string& label) {
  return label.rfind("--", 0) == 0;
}

std::string size_text(std::uint64_t bytes) {
  return bytes == kSaturated ? "more than 16 EiB" : format_bytes(bytes);
}

// cgroup v2's limit of this process's group, when one is set ("max" is none).
std::uint64_t cgroup_limit() {
  std::ifstream in("/sys/fs/cgroup/memory.max");
  std::string text;
  if (!(in >> text) || text == "max") return kSaturated;
  try {
    return std::stoull(text);
  } catch (const std::exception&) {
    return kSaturated;
  }
}

}  // namespace

std::uint64_t product_of(const std::vector<Factor>& factors) {
  std::uint64_t product = 1;
  for (const Factor& f : factors) product = mul_saturated(product, f.value);
  return product;
}

std::string describe(const std::vector<Factor>& factors) {
  std::string text;
  for (const Factor& f : factors) {
    if (!text.empty()) text += " x ";
    text +=
        is_flag(f.label) ? f.label + " " + std::to_string(f.value) : std::to_string(f.value) + " " + f.label;
  }
  return text;
}

void MemoryPlan::add(std::string what, std::vector<Factor> factors) {
  Term term{std::move(what), describe(factors), {}, product_of(factors)};
  for (const Factor& f : factors)
    if (is_flag(f.label) && std::find(term.flags.begin(), term.flags.end(), f.label) == term.flags.end())
      term.flags.push_back(f.label);
  terms_.push_back(std::move(term));
}

void MemoryPlan::add_bytes(std::string what, std::uint64_t bytes, std::string flags) {
  terms_.push_back({std::move(what), flags, {flags}, bytes});
}

std::uint64_t MemoryPlan::total() const {
  std::uint64_t sum = 0;
  for (const Term& t : terms_) sum = add_saturated(sum, t.bytes);
  return sum;
}

void MemoryPlan::check(std::uint64_t available, std::uint64_t copies) const {
  const std::uint64_t each = total(), all = mul_saturated(each, std::max<std::uint64_t>(copies, 1));
  if (all <= available) return;
  std::vector<const Term*> largest;
  for (const Term& t : terms_) largest.push_back(&t);
  std::stable_sort(largest.begin(), largest.end(),
                   [](const Term* a, const Term* b) { return a->bytes > b->bytes; });
  std::string parts;
  for (std::size_t i = 0; i < largest.size() && i < 3 && largest[i]->bytes > 0; ++i)
    parts +=
        (i ? "; " : "") + largest[i]->what + " (" + largest[i]->how + ") " + size_text(largest[i]->bytes);
  std::string lower;
  for (const std::string& flag : largest.front()->flags) lower += (lower.empty() ? "" : ", ") + flag;
  std::string message = lower + ": needs about " + size_text(each) + " per process (" + parts + ")";
  if (copies > 1) message += ", x " + std::to_string(copies) + " processes on this host";
  message += ", more than the " + size_text(available) + " of memory here";
  fail(Errc::invalid_argument, message);
}

std::uint64_t usable_memory_bytes() {
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  const std::uint64_t physical = pages > 0 && page > 0 ? mul_saturated(static_cast<std::uint64_t>(pages),
                                                                       static_cast<std::uint64_t>(page))
                                                       : kSaturated;
  return std::min(physical, cgroup_limit());
}

}  // namespace ferry::tools::cli
