// Host tensors: aligned, zeroed unless asked otherwise, copies sharing memory, and blocks of 1 MiB and more
// recycled through the block cache, a fresh one coming back with its pages already faulted in.
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cerrno>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "common/skip.hpp"
#include "ferry/tensor.hpp"

using ferry::DType;
using ferry::Tensor;

namespace {

// Whether this kernel pre-faults on request (MADV_POPULATE_WRITE, Linux 5.14).
bool kernel_populates() {
#ifdef MADV_POPULATE_WRITE
  const std::size_t bytes = 2 * 4096;
  void* probe = ::mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (probe == MAP_FAILED) return false;
  const bool populated = ::madvise(probe, bytes, MADV_POPULATE_WRITE) == 0;
  ::munmap(probe, bytes);
  return populated;
#else
  return false;
#endif
}

// Pages of [data, data + bytes) that are not resident.
std::size_t missing_pages(const void* data, std::size_t bytes) {
  const std::size_t page = static_cast<std::size_t>(::sysconf(_SC_PAGESIZE));
  const auto begin = reinterpret_cast<std::uintptr_t>(data) / page * page;
  const auto end = (reinterpret_cast<std::uintptr_t>(data) + bytes + page - 1) / page * page;
  std::vector<unsigned char> resident((end - begin) / page);
  REQUIRE(::mincore(reinterpret_cast<void*>(begin), end - begin, resident.data()) == 0);
  return static_cast<std::size_t>(
      std::count_if(resident.begin(), resident.end(), [](unsigned char r) { return (r & 1) == 0; }));
}

}  // namespace

TEST_CASE("host tensors are aligned and zeroed, and copies share their memory", "[unit]") {
  Tensor small({3, 5}, DType::fp32);
  CHECK(reinterpret_cast<std::uintptr_t>(small.data()) % 64 == 0);
  CHECK(std::all_of(small.data_as<float>(), small.data_as<float>() + 15, [](float v) { return v == 0.0f; }));
  Tensor copy = small;
  CHECK(copy.data() == small.data());
}

// 7.5 MiB: a dispatch output of 1920 rows of 2048 bf16 values, in the 8 MiB size class.
constexpr std::int64_t kRows = 1920, kHidden = 2048;
constexpr std::size_t kBytes = std::size_t{kRows} * kHidden * 2;

TEST_CASE("blocks of 1 MiB and more are recycled and zeroed again when asked", "[unit]") {
  Tensor fresh({kRows, kHidden}, DType::bf16, Tensor::Init::uninitialized);
  void* const block = fresh.data();
  CHECK(reinterpret_cast<std::uintptr_t>(block) % (std::size_t{2} << 20) == 0);  // room for huge pages
  std::memset(fresh.data(), 0xff, kBytes);
  fresh = Tensor();  // back to the cache

  Tensor again({kRows, kHidden}, DType::bf16);  // the same size class: the same block, zeroed as asked
  CHECK(again.data() == block);
  const auto* values = static_cast<const unsigned char*>(again.data());
  CHECK(std::all_of(values, values + kBytes, [](unsigned char v) { return v == 0; }));

  Tensor other({1000, kHidden}, DType::bf16, Tensor::Init::uninitialized);  // 4 MB: another size class
  CHECK(other.data() != block);
}

// The first write to fresh memory faults page by page, inside the copies that fill an operation's outputs;
// the cache faults a fresh block in at once when it hands it out (docs/perf/probes.md has the figures).
TEST_CASE("a fresh cached block comes with its pages faulted in", "[unit]") {
  if (!kernel_populates()) {
    ferry::test::skip("this kernel does not pre-fault on request (MADV_POPULATE_WRITE, Linux 5.14)");
  }
  // 12 MB, a size class no other test case here uses, so the block is fresh whatever ran before in this
  // process.
  Tensor fresh({3000, kHidden}, DType::bf16, Tensor::Init::uninitialized);
  CHECK(missing_pages(fresh.data(), std::size_t{3000} * kHidden * 2) == 0);  // nothing has written it yet
}
