// The seed of a randomized test: FERRY_TEST_SEED when set (to repeat a run), else a fresh one. A test prints
// it, flushed, before it draws anything, so a crash or a sanitizer that stops the process still leaves the
// number that repeats the run.
//
//   std::mt19937_64 rng(ferry::test::announce_seed("proxy wraparounds"));
//   // prints "proxy wraparounds: seed 1234 (set FERRY_TEST_SEED to repeat)"
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>

namespace ferry::test {

inline std::uint64_t test_seed() {
  if (const char* text = std::getenv("FERRY_TEST_SEED"); text != nullptr && *text != '\0')
    return std::strtoull(text, nullptr, 10);
  std::random_device source;
  return (std::uint64_t{source()} << 32) ^ source();
}

inline std::uint64_t announce_seed(const char* test) {
  const std::uint64_t seed = test_seed();
  std::printf("%s: seed %llu (set FERRY_TEST_SEED to repeat)\n", test, static_cast<unsigned long long>(seed));
  std::fflush(stdout);
  return seed;
}

}  // namespace ferry::test
