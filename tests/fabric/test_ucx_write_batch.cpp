// The ucx fabric's write batches (fabric/ucx_write_batch.hpp): applied in order, and refused whole, by name,
// when they are not what ferry sends.
#include <catch2/catch.hpp>
#include <cstddef>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "common/seed.hpp"
#include "fabric/ucx_write_batch.hpp"

namespace wb = ferry::transport::write_batch;

namespace {

// Builds a message the way the fabric lays it out.
struct Message {
  wb::BatchHeader header;
  std::vector<wb::BatchEntry> entries;
  std::vector<std::byte> payload;

  void put(std::uint32_t region, std::uint64_t offset, std::vector<std::byte> bytes) {
    entries.push_back({static_cast<std::uint32_t>(wb::EntryKind::put), region, offset, bytes.size()});
    payload.insert(payload.end(), bytes.begin(), bytes.end());
    header.payload_bytes += bytes.size();
  }
  void add(std::uint32_t region, std::uint64_t offset, std::uint64_t value) {
    entries.push_back({static_cast<std::uint32_t>(wb::EntryKind::add), region, offset, value});
  }
  std::vector<std::byte> bytes() const {
    wb::BatchHeader h = header;
    h.entries = static_cast<std::uint32_t>(entries.size());
    std::vector<std::byte> out(sizeof h + entries.size() * sizeof(wb::BatchEntry));
    std::memcpy(out.data(), &h, sizeof h);
    if (!entries.empty())
      std::memcpy(out.data() + sizeof h, entries.data(), entries.size() * sizeof(wb::BatchEntry));
    out.insert(out.end(), payload.begin(), payload.end());
    return out;
  }
};

std::vector<std::byte> filled(std::size_t n, int value) {
  return std::vector<std::byte>(n, static_cast<std::byte>(value));
}

// Two regions of the target: 256 and 64 bytes, 8-byte aligned.
struct Target {
  alignas(8) std::byte a[256] = {};
  alignas(8) std::byte b[64] = {};
  std::vector<wb::TargetRegion> regions() { return {{a, sizeof a}, {b, sizeof b}}; }
  std::uint64_t word(std::size_t offset) const {
    std::uint64_t value = 0;
    std::memcpy(&value, b + offset, 8);
    return value;
  }
  bool untouched() const {
    for (std::byte x : a)
      if (x != std::byte{0}) return false;
    for (std::byte x : b)
      if (x != std::byte{0}) return false;
    return true;
  }
};

std::string apply_batch(const std::vector<std::byte>& message, Target& target, int world = 4) {
  const auto regions = target.regions();
  return wb::apply(message.data(), message.size(), regions, world);
}

}  // namespace

TEST_CASE("a write batch writes its puts and adds in order") {
  Target target;
  Message m;
  m.header.sender = 2;
  m.put(0, 16, filled(5, 7));
  m.add(1, 8, 3);
  m.put(0, 250, filled(6, 9));
  m.put(0, 17, filled(1, 4));  // a later put over an earlier one wins
  m.add(1, 8, 4);
  m.put(1, 0, {});  // an empty put is allowed
  REQUIRE(apply_batch(m.bytes(), target) == "");
  CHECK(target.a[15] == std::byte{0});
  CHECK(target.a[16] == std::byte{7});
  CHECK(target.a[17] == std::byte{4});
  CHECK(target.a[20] == std::byte{7});
  CHECK(target.a[21] == std::byte{0});
  CHECK(target.a[255] == std::byte{9});
  CHECK(target.word(8) == 7);
}

TEST_CASE("a write batch that is not what ferry sends is refused whole, by name") {
  struct Case {
    const char* name;
    std::vector<std::byte> message;
    const char* says;
  };
  std::vector<Case> cases;
  auto with = [](auto edit) {
    Message m;
    m.put(0, 0, filled(4, 1));  // would be written if the batch were not refused
    edit(m);
    return m;
  };
  cases.push_back({"shorter than a header", filled(10, 0), "shorter than its header"});
  {
    auto bytes = with([](Message&) {}).bytes();
    bytes[0] = std::byte{0x55};
    cases.push_back({"bad magic", bytes, "not a write batch"});
  }
  cases.push_back({"sender outside the world", with([](Message& m) { m.header.sender = 4; }).bytes(),
                   "names sender 4 in a world of 4"});
  {
    auto bytes = with([](Message&) {}).bytes();
    const std::uint32_t huge = 1u << 30;
    std::memcpy(bytes.data() + offsetof(wb::BatchHeader, entries), &huge, sizeof huge);
    cases.push_back({"more entries than bytes", bytes, "announces 1073741824 entries"});
  }
  cases.push_back({"a region the target lacks", with([](Message& m) { m.put(2, 0, filled(1, 1)); }).bytes(),
                   "names a region this rank does not have"});
  cases.push_back({"a put past the end", with([](Message& m) { m.put(1, 60, filled(8, 1)); }).bytes(),
                   "past the region's end"});
  cases.push_back({"an offset that wraps",
                   with([](Message& m) { m.put(0, ~std::uint64_t{0}, filled(2, 1)); }).bytes(),
                   "past the region's end"});
  cases.push_back(
      {"a misaligned add", with([](Message& m) { m.add(1, 4, 1); }).bytes(), "aligned 64-bit word"});
  cases.push_back(
      {"an add past the end", with([](Message& m) { m.add(1, 64, 1); }).bytes(), "aligned 64-bit word"});
  cases.push_back({"an unknown kind", with([](Message& m) {
                                        m.entries.push_back({9, 0, 0, 0});
                                      }).bytes(),
                   "unknown kind 9"});
  {
    auto bytes = with([](Message&) {}).bytes();
    bytes.push_back(std::byte{1});
    cases.push_back({"trailing bytes", bytes, "the message holds 5"});
  }
  {
    auto bytes = with([](Message& m) { m.header.payload_bytes = 0; }).bytes();
    cases.push_back({"a header that miscounts", bytes, "its header says 0"});
  }
  {
    Message m = with([](Message&) {});
    m.entries.push_back({static_cast<std::uint32_t>(wb::EntryKind::put), 0, 8, 100});  // no bytes behind it
    cases.push_back({"a put without its payload", m.bytes(), "needs more payload than the message carries"});
  }
  for (const Case& c : cases) {
    INFO(c.name);
    Target target;
    const std::string problem = apply_batch(c.message, target);
    INFO(problem);
    CHECK(problem.find(c.says) != std::string::npos);
    CHECK(target.untouched());
  }
}

TEST_CASE("a write batch into device memory, or an add at a misaligned address, is refused") {
  Target target;
  Message put;
  put.put(1, 0, filled(4, 1));
  std::vector<wb::TargetRegion> device = target.regions();
  device[1].host = false;
  const auto bytes = put.bytes();
  CHECK(wb::apply(bytes.data(), bytes.size(), device, 4).find("device memory") != std::string::npos);

  Message add;
  add.add(1, 8, 1);
  std::vector<wb::TargetRegion> shifted = target.regions();
  shifted[1].base += 1;  // an aligned offset in a region that starts off alignment
  shifted[1].bytes -= 1;
  const auto add_bytes = add.bytes();
  CHECK(wb::apply(add_bytes.data(), add_bytes.size(), shifted, 4).find("aligned 64-bit word") !=
        std::string::npos);
  CHECK(target.untouched());
}

// Random batches against a plain reference; then random corruptions of them, which must be applied or refused
// (never written in part, never read out of bounds: the asan preset runs this too).
TEST_CASE("random write batches match a reference, corrupted ones never write in part") {
  const std::uint64_t seed = ferry::test::announce_seed("write batches");
  std::mt19937_64 rng(seed);
  for (int round = 0; round < 300; ++round) {
    Target target;
    Target reference;
    Message m;
    m.header.sender = static_cast<std::uint32_t>(rng() % 4);
    const int entries = static_cast<int>(rng() % 12);
    for (int i = 0; i < entries; ++i) {
      if (rng() % 3 == 0) {
        const std::uint64_t offset = 8 * (rng() % 8);
        const std::uint64_t value = rng() % 1000;
        m.add(1, offset, value);
        std::uint64_t word = 0;
        std::memcpy(&word, reference.b + offset, 8);
        word += value;
        std::memcpy(reference.b + offset, &word, 8);
      } else {
        const std::uint32_t region = static_cast<std::uint32_t>(rng() % 2);
        const std::size_t size = region == 0 ? sizeof reference.a : sizeof reference.b;
        const std::size_t bytes = rng() % (size + 1);
        const std::size_t offset = rng() % (size - bytes + 1);
        std::vector<std::byte> data(bytes);
        for (auto& x : data) x = static_cast<std::byte>(rng());
        m.put(region, offset, data);
        if (bytes > 0) std::memcpy((region == 0 ? reference.a : reference.b) + offset, data.data(), bytes);
      }
    }
    const std::vector<std::byte> message = m.bytes();
    INFO("round " << round);
    REQUIRE(apply_batch(message, target) == "");
    CHECK(std::memcmp(target.a, reference.a, sizeof target.a) == 0);
    CHECK(std::memcmp(target.b, reference.b, sizeof target.b) == 0);

    std::vector<std::byte> corrupt = message;
    const std::size_t table = sizeof(wb::BatchHeader) + m.entries.size() * sizeof(wb::BatchEntry);
    corrupt[rng() % table] ^= static_cast<std::byte>(1u << (rng() % 8));
    if (rng() % 4 == 0) corrupt.resize(rng() % (corrupt.size() + 1));
    Target victim;
    if (!apply_batch(corrupt, victim).empty()) CHECK(victim.untouched());
  }
}
