// Fuzzes the checkpoint reader (load_checkpoint), what a resume does with whatever file it is pointed at:
// a file that is not a whole, current checkpoint must be refused with a ferry::Error naming it (any other
// exception, a crash, a huge allocation or a sanitizer report is a bug), and a file that loads must hold
// arrays of the sizes it declared.
//
// Input: byte 0 bit 0 set = the harness writes the right checksum over the rest (so the fuzzer reaches the
// parser behind the checksum), then the file's bytes.
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "ferry/core/error.hpp"
#include "ferry/model/checkpoint.hpp"
#include "fuzz_check.hpp"

namespace {

std::uint64_t fnv1a(const std::uint8_t* data, std::size_t size) {  // the checkpoint format's checksum
  std::uint64_t h = 0xcbf29ce484222325ULL;
  for (std::size_t i = 0; i < size; ++i) {
    h ^= data[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

// One scratch file per process, removed at exit: load_checkpoint reads a path.
const std::string& scratch_path() {
  static const std::string path = [] {
    std::string name = "/tmp/ferry-fuzz-checkpoint-" + std::to_string(::getpid());
    std::atexit([] { std::remove(scratch_path().c_str()); });
    return name;
  }();
  return path;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size < 1) return 0;
  std::vector<std::uint8_t> file(data + 1, data + size);
  if ((data[0] & 1) && file.size() >= 8) {
    const std::uint64_t sum = fnv1a(file.data(), file.size() - 8);
    for (int i = 0; i < 8; ++i) file[file.size() - 8 + i] = static_cast<std::uint8_t>(sum >> (8 * i));
  }
  std::FILE* out = std::fopen(scratch_path().c_str(), "wb");
  FUZZ_CHECK(out != nullptr);
  FUZZ_CHECK(std::fwrite(file.data(), 1, file.size(), out) == file.size());
  FUZZ_CHECK(std::fclose(out) == 0);

  ferry::model::TrainerState state;
  try {
    state = ferry::model::load_checkpoint(scratch_path());
  } catch (const ferry::Error& error) {
    FUZZ_CHECK(error.code() == ferry::Errc::invalid_argument || error.code() == ferry::Errc::unsupported);
    return 0;
  }
  // Loaded: the four parameter arrays agree, and nothing outlived the file's own bytes.
  FUZZ_CHECK(state.adam_m.size() == state.params.size());
  FUZZ_CHECK(state.adam_v.size() == state.params.size());
  FUZZ_CHECK(state.ema.size() == state.params.size());
  std::size_t floats = 4 * state.params.size();
  for (const auto& bias : state.balance_bias) floats += bias.size();
  FUZZ_CHECK(floats * sizeof(float) <= file.size());
  return 0;
}
